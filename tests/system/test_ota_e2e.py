"""An update as a maker runs one: releases published to a running gateway
(`permabeta ota publish`), `permabeta devices update` following it live,
a device on the real MicroPython unix port with a 128 KB heap taking it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ota import keys as ota_keys
from ota.release import Release, build

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.processes import DeviceProcess, GatewayProcess
from ..support.wait import wait_for
from .conftest import feature_sources, hungry_release, ota_device, running_set

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published(
    ota_gateway: GatewayProcess, release2: Release, release3: Release, crashing_release: Release
) -> GatewayProcess:
    for r in (release2, release3, crashing_release):
        out = ota_gateway.cli("ota", "publish", str(r.path))
        assert "published" in out.stdout
    return ota_gateway


def update(gw: GatewayProcess, dev: DeviceProcess, ref: str) -> tuple[int, str, dict[str, Any]]:
    """Run `devices update`; (exit code, its output, the update record)."""
    proc = gw.popen_cli("devices", "update", dev.id, ref, "--timeout", "120")
    out, err = proc.communicate(timeout=150)
    return proc.returncode, out + err, gw_updates(gw, dev.id)[0]


def gw_updates(gw: GatewayProcess, dev: str) -> list[dict[str, Any]]:
    from gateway.client import ApiClient

    return list(ApiClient.from_db(gw.db).request("GET", f"/api/v1/devices/{dev}/updates"))


def online(gw: GatewayProcess, dev: DeviceProcess) -> dict[str, Any]:
    return wait_for(lambda: (d := gw.device(dev.id))["online"] and d, 30, what=f"{dev.id} online")


@pytest.mark.long
def test_update_with_the_cli_counts_only_at_committed(
    mosquitto: Mosquitto,
    published: GatewayProcess,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    release2: Release,
) -> None:
    dev = ota_device(mosquitto, make_device, keys)
    online(published, dev)
    code, out, record = update(published, dev, f"thermostat@{release2.counter}")
    assert code == 0, (out, dev.output()[-3000:])
    assert "committed" in out and "KB" in out  # the live progress, then the end
    assert record["state"] == "committed"
    assert record["bytes"] == record["total"] > 64 * 1024
    assert running_set(dev) == (2, release2.sha256, ["eco", "thermostat"])
    # the hello after the commit (the one from the trial already showed eco running)
    try:
        shown = wait_for(
            lambda: (d := published.device(dev.id)).get("ota", {}).get("state") == "committed" and d,
            30,
            what="hello after the commit",
        )
    except AssertionError as exc:
        gw_log = published.log.read_text()[-3000:]
        raise AssertionError(f"{exc}: {published.device(dev.id)}\n{dev.output()[-3000:]}\n{gw_log}") from None
    assert shown["features"]["eco"]["running"] is True
    assert shown["features"]["thermostat"]["running"] is True
    assert shown["ota"] == {"counter": 2, "manifest": release2.sha256, "state": "committed", "root": 1}


@pytest.mark.long  # (make long: make test stays within 10 minutes)
def test_second_update_transfers_only_the_changed_file(
    mosquitto: Mosquitto,
    published: GatewayProcess,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    release2: Release,
    release3: Release,
) -> None:
    dev = ota_device(mosquitto, make_device, keys)
    online(published, dev)
    assert update(published, dev, f"thermostat@{release2.counter}")[0] == 0
    wait_for(
        lambda: published.device(dev.id).get("ota", {}).get("counter") == 2, 30, what="hello on release 2"
    )
    code, out, record = update(published, dev, f"thermostat@{release3.counter}")
    assert code == 0, (out, dev.output()[-3000:])
    old = {f.sha256 for f in release2.files}
    changed = [f for f in release3.files if f.sha256 not in old]
    assert [f.path for f in changed] == ["eco/tables/t03.bin"]
    # the device asked for that one blob and the manifest, nothing else
    assert record["total"] == changed[0].zsize
    assert record["served"] == changed[0].zsize + len(release3.manifest)
    assert running_set(dev)[:2] == (3, release3.sha256)


def test_a_release_that_crashes_rolls_back_and_counts_as_failed(
    mosquitto: Mosquitto,
    published: GatewayProcess,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    crashing_release: Release,
) -> None:
    dev = ota_device(mosquitto, make_device, keys)
    online(published, dev)
    code, out, record = update(published, dev, f"thermostat@{crashing_release.counter}")
    assert code == 1
    assert record["state"] == "rolled_back", (record, out, dev.output()[-3000:])
    assert "crashy" in record["reason"] and "crashy cannot start" in record["reason"]
    # back on the set that worked, which still runs
    assert running_set(dev) == (0, None, ["thermostat"])
    dev.set_sensors(temperature=15.0)
    wait_for(lambda: dev.actuators().get("relay") is True, 20, what="the old thermostat heating")


@pytest.mark.long
def test_a_release_out_of_ram_at_import_reaches_the_gateway_with_the_memory_error_and_where(
    mosquitto: Mosquitto,
    published: GatewayProcess,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    tmp_path: Path,
) -> None:
    hungry = hungry_release(tmp_path, keys, "import")
    assert "published" in published.cli("ota", "publish", str(hungry.path)).stdout
    dev = ota_device(mosquitto, make_device, keys)
    online(published, dev)
    code, out, record = update(published, dev, f"thermostat@{hungry.counter}")
    assert code == 1
    assert record["state"] == "rolled_back", (record, out, dev.output()[-3000:])
    reason = record["reason"]
    assert reason.startswith("trial did not commit in 3 boots; the last ended by MemoryError: "), reason
    assert reason.endswith(", at import of feature hungry"), reason
    assert reason in out  # `devices update` shows it to the maker
    assert running_set(dev) == (0, None, ["thermostat"])


@pytest.mark.long
def test_a_shirt_on_a_low_battery_defers_the_update_and_commits_it_once_charged(
    mosquitto: Mosquitto,
    ota_gateway: GatewayProcess,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    tmp_path: Path,
) -> None:
    (vent,) = feature_sources(tmp_path / "src", ("vent",))
    (vent / "curve.py").write_text((vent / "curve.py").read_text() + "REVISION = 2\n")
    shirt2 = build("shirt", [vent], "2.0", tmp_path / "rs", 2, ("mpy",), keys)
    assert "published" in ota_gateway.cli("ota", "publish", str(shirt2.path)).stdout
    dev = ota_device(mosquitto, make_device, keys, model="shirt")
    dev.set_sensors(battery=18.0)
    online(ota_gateway, dev)
    proc = ota_gateway.popen_cli("devices", "update", dev.id, "shirt@2", "--timeout", "150")
    try:
        held = wait_for(
            lambda: (u := gw_updates(ota_gateway, dev.id)[0])["state"] == "deferred" and u,
            60,
            what="deferred",
        )
        assert held["reason"] == "battery: 18% is below 30%" and not held["ended"], held
        assert held["served"] == 0 and held["requests"] == 0  # nothing downloaded
        listed = ota_gateway.cli("updates", "list", "--device", dev.id).stdout
        assert "deferred" in listed and "battery: 18% is below 30%" in listed, listed
        time.sleep(3)
        assert gw_updates(ota_gateway, dev.id)[0]["state"] == "deferred"
        assert running_set(dev)[0] == 0
        dev.set_sensors(battery=36.0)  # charged
        out, err = proc.communicate(timeout=170)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (out, err, dev.output()[-3000:])
    assert "deferred (battery: 18% is below 30%)" in out and "committed" in out, out
    record = gw_updates(ota_gateway, dev.id)[0]
    assert record["state"] == "committed" and record["deferred_since"] is None, record
    assert running_set(dev) == (2, shirt2.sha256, ["vent"])
