"""A device on a serial line, end to end: the real MicroPython unix port
(128 KB heap) on one end of a pty pair that socat makes, `permabeta gateway
run --serial` on the other (docs/protocol.md 15, 17). It proves who it is,
is listed with its carrier, its telemetry is stored, it answers a command,
it takes an update to committed, and a pulled cable (socat killed, then
started again on the same paths) brings it back by itself. A line whose
device does not hold the key is refused, and nothing it says is taken."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware.pb.net.proof import link_key
from gateway.cli_registry import password_hash
from gateway.client import ApiClient
from ota import keys as ota_keys
from ota.release import Release

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.processes import DeviceProcess, GatewayProcess
from ..support.ptys import Line
from ..support.wait import wait_for
from .conftest import ota_device, running_set

pytestmark = [pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat"), pytest.mark.slow]


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    ln = Line(tmp_path)
    ln.plug()
    yield ln
    ln.pull()


@pytest.fixture
def serial_gateway(
    tmp_path: Path, mosquitto: Mosquitto, gateway_keys: Path, line: Line
) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(
        mosquitto.gateway_url,
        tmp_path / "gw.db",
        tmp_path / "gw.log",
        ["--keys", str(gateway_keys), "--serial", line.gw],
    )
    gw.start()
    yield gw
    gw.stop()


def on_line(
    mosquitto: Mosquitto,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    gw: GatewayProcess,
    line: Line,
    password: str | None = None,
) -> DeviceProcess:
    """A thermostat provisioned for the line (config.json "link"), registered
    with the gateway as `permabeta provision` registers one (with the key of
    password, where another is given), started."""
    dev = ota_device(mosquitto, make_device, keys, start=False)
    cfg = json.loads((dev.path / "config.json").read_text())
    cfg["link"] = {"serial": line.dev, "baud": 115200}
    (dev.path / "config.json").write_text(json.dumps(cfg))
    password = password or dev.password
    ApiClient.from_db(gw.db).request(
        "PUT",
        f"/api/v1/devices/{dev.id}/registration",
        {
            "model": "thermostat",
            "board": "thermostat-v1",
            "password_hash": password_hash(dev.id, password),
            "link_key": link_key(dev.id, password).hex(),
        },
    )
    dev.start()
    return dev


def shown(gw: GatewayProcess, dev: DeviceProcess) -> dict[str, object]:
    return gw.device(dev.id)


@pytest.mark.long  # (slow: make long)
def test_a_device_on_a_serial_line_is_listed_reports_answers_and_comes_back_after_the_cable(
    mosquitto: Mosquitto,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    serial_gateway: GatewayProcess,
    line: Line,
) -> None:
    gw = serial_gateway
    dev = on_line(mosquitto, make_device, keys, gw, line)
    try:
        d = wait_for(lambda: (d := shown(gw, dev))["online"] and d, 30, what="the device online on its line")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dev.output()[-2000:]}\n{gw.log.read_text()[-2000:]}") from None
    assert d["carrier"] == f"serial:{line.gw}"
    listed = json.loads(gw.cli("devices", "list", "--json").stdout)
    # (the gateway sees the broker's devices too: the tests' others, on mqtt)
    assert [(x["id"], x["carrier"]) for x in listed if x["id"] == dev.id] == [(dev.id, f"serial:{line.gw}")]
    wait_for(lambda: shown(gw, dev).get("last_telemetry"), 20, what="telemetry stored")
    out = gw.cli("devices", "send", dev.id, "ping", "--json")
    assert json.loads(out.stdout)["ok"] is True
    # the cable pulled: the device is offline (lost), its line tried again
    line.pull()
    wait_for(lambda: not shown(gw, dev)["online"], 20, what="offline once the cable is pulled")
    assert shown(gw, dev)["state_reason"] == "lost"
    # and plugged back: it proves itself again and is back, by itself
    line.plug()
    wait_for(lambda: shown(gw, dev)["online"], 30, what="back once the cable is plugged in")
    out = gw.cli("devices", "send", dev.id, "ping", "--json")
    assert json.loads(out.stdout)["ok"] is True
    # (the gateway's line: opened again; nothing refused along the way)
    assert "proof refused" not in gw.log.read_text()
    # the gateway restarted, the line up all along: the device is asked to prove itself again
    gw.stop()
    gw.start()
    try:
        wait_for(
            lambda: gw.cli("devices", "send", dev.id, "ping", "--json", check=False).returncode == 0,
            40,
            interval=1,
            what="an answer after the gateway's restart",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dev.output()[-2000:]}\n{gw.log.read_text()[-3000:]}") from None


@pytest.mark.long
def test_a_device_on_a_serial_line_takes_an_update_to_committed_across_a_pulled_cable(
    mosquitto: Mosquitto,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    serial_gateway: GatewayProcess,
    line: Line,
    release2: Release,
) -> None:
    gw = serial_gateway
    dev = on_line(mosquitto, make_device, keys, gw, line)
    wait_for(lambda: shown(gw, dev)["online"], 30, what="the device online on its line")
    assert "published" in gw.cli("ota", "publish", str(release2.path)).stdout
    proc = gw.popen_cli("devices", "update", dev.id, f"thermostat@{release2.counter}", "--timeout", "150")
    # the cable pulled once the download has begun, and plugged back
    api = ApiClient.from_db(gw.db)
    wait_for(
        lambda: (u := api.request("GET", f"/api/v1/devices/{dev.id}/updates")) and u[0]["served"] > 0,
        60,
        interval=0.05,
        what="the download begun",
    )
    line.pull()
    time.sleep(1)
    line.plug()
    out, err = proc.communicate(timeout=180)
    said = f"{out}{err}\n--- device:\n{dev.output()[-3000:]}\n--- gateway:\n{gw.log.read_text()[-4000:]}"
    assert proc.returncode == 0, said
    assert running_set(dev) == (2, release2.sha256, ["eco", "thermostat"])
    try:
        wait_for(
            lambda: shown(gw, dev).get("ota", {}).get("state") == "committed",  # type: ignore[union-attr]
            30,
            what="the hello after the commit",
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n{shown(gw, dev)}\n{dev.output()[-3000:]}\n{gw.log.read_text()[-3000:]}"
        ) from None
    assert shown(gw, dev)["carrier"] == f"serial:{line.gw}"


def test_a_device_without_the_key_is_refused_and_nothing_it_says_is_taken(
    mosquitto: Mosquitto,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    serial_gateway: GatewayProcess,
    line: Line,
) -> None:
    """Its id is registered, with another password's key: a board that
    claims the id of a device it is not."""
    gw = serial_gateway
    dev = on_line(mosquitto, make_device, keys, gw, line, password="the real one")
    wait_for(
        lambda: "the gateway did not prove it holds the device's key" in dev.output(), 30, what="refused"
    )
    listed = json.loads(gw.cli("devices", "list", "--json").stdout)
    assert dev.id not in [x["id"] for x in listed]
