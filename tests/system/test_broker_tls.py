"""The broker over TLS with the owner's CA (docs/security.md 5.4): a real
Mosquitto with a TLS listener whose certificate `permabeta broker ca`'s code
made, the gateway as `permabeta gateway run --ca`, and devices provisioned
for mqtts:// on the real MicroPython unix port (and under CPython)."""

from __future__ import annotations

import json
import re
import secrets
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.broker import MosquittoProcess, TlsListener, free_port
from gateway.ca import CaFiles, create_ca, read_ca, server_cert
from gateway.cli import main
from gateway.provision import provision_into
from gateway.tls import client_context
from ota import keys as ota_keys
from ota.release import Release

from ..support.mosquitto import Mosquitto, connack
from ..support.processes import PERMABETA, SMALL_HEAP, DeviceProcess, GatewayProcess
from ..support.wait import wait_for
from .conftest import OTA_CONFIG, offer_of, running_set, serve

pytestmark = pytest.mark.slow


def _broker(folder: Path, ca: Path, hosts: list[str]) -> Mosquitto:
    """A Mosquitto with a TLS listener whose certificate the CA in ca signed for hosts."""
    cert, key = server_cert(ca, hosts, folder / "tls")
    tls = TlsListener(free_port(), CaFiles.of(ca).cert, cert, key)
    broker = Mosquitto(folder / "mosquitto", tls=tls)
    broker.start()
    return broker


@pytest.fixture(scope="module")
def owners_ca(tmp_path_factory: pytest.TempPathFactory) -> CaFiles:
    """The CA the owner of the gateway keeps: devices and the gateway trust it."""
    return create_ca(tmp_path_factory.mktemp("owner") / "ca")


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, owners_ca: CaFiles) -> Iterator[Mosquitto]:
    broker = _broker(tmp_path_factory.mktemp("tls-broker"), owners_ca.key.parent, ["localhost", "127.0.0.1"])
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def impostor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A broker at the same address whose certificate another CA signed."""
    folder = tmp_path_factory.mktemp("impostor")
    broker = _broker(folder, create_ca(folder / "other-ca").key.parent, ["localhost", "127.0.0.1"])
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def misnamed(tmp_path_factory: pytest.TempPathFactory, owners_ca: CaFiles) -> Iterator[Mosquitto]:
    """A broker whose certificate the owner's CA signed, for another name than the one devices use."""
    broker = _broker(tmp_path_factory.mktemp("misnamed"), owners_ca.key.parent, ["broker.example"])
    yield broker
    broker.stop()


def _device(
    folder: Path,
    broker: Mosquitto,
    ca: CaFiles,
    interpreter: str = "micropython",
    heap: str = SMALL_HEAP,
    **options: Any,
) -> DeviceProcess:
    """A thermostat provisioned for broker's TLS listener, trusting ca (as its DER), not
    started. options: provision_into's."""
    dev_id = f"tt-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    provision_into(
        folder / dev_id,
        "thermostat",
        dev_id,
        broker.tls_url,
        password=password,
        telemetry_s=1,
        keepalive=10,
        compile_mpy=interpreter == "micropython",
        ca=read_ca(ca.der),
        **options,
    )
    broker.add_user(dev_id, password)
    return DeviceProcess(folder / dev_id, interpreter, heap)


@pytest.fixture
def devices() -> Iterator[list[DeviceProcess]]:
    made: list[DeviceProcess] = []
    yield made
    for dev in made:
        dev.kill()


@pytest.fixture
def tls_gateway(tmp_path: Path, tls_broker: Mosquitto, owners_ca: CaFiles) -> Iterator[GatewayProcess]:
    url = tls_broker.tls_url.with_credentials(*tls_broker.operator())
    gw = GatewayProcess(url, tmp_path / "gateway.db", tmp_path / "gateway.log", ["--ca", str(owners_ca.cert)])
    gw.start()
    yield gw
    gw.stop()


def _connections(broker: Mosquitto, dev_id: str) -> int:
    """The MQTT connections Mosquitto logged as dev_id (it logs each one it accepts)."""
    return (broker.dir / "mosquitto.log").read_text(errors="replace").count(f" as {dev_id} ")


class Traced(DeviceProcess):
    """A device run under strace, which writes every setsockopt call of it
    (its supervisor and every start of it) to strace.txt in its folder."""

    def command(self) -> list[str]:
        trace = self.path / "strace.txt"
        return ["strace", "-f", "-qq", "-e", "trace=setsockopt", "-o", str(trace), *super().command()]


def test_a_device_on_mqtts_says_hello_to_the_gateway_on_mqtts(
    tmp_path: Path,
    tls_broker: Mosquitto,
    owners_ca: CaFiles,
    tls_gateway: GatewayProcess,
    devices: list[DeviceProcess],
    interpreter: str,
) -> None:
    plain = _device(tmp_path, tls_broker, owners_ca, interpreter, heap="192K")
    dev = Traced(plain.path, interpreter, "192K")
    devices.append(dev.start())
    shown = wait_for(lambda: (d := tls_gateway.device(dev.id))["online"] and d, 30, what="online over TLS")
    # it sends at once, not waiting to fill a segment: TCP_NODELAY is set on the socket under
    # TLS too, as the kernel sees it (without it, a request written right after a status
    # waits for the broker's delayed ACK: 40 ms at each batch of an update's blobs)
    calls = (dev.path / "strace.txt").read_text()
    assert "SOL_TCP, TCP_NODELAY, [1], 4) = 0" in calls, calls[-2000:]
    assert shown["model"] == "thermostat"
    assert shown["platform"] == ("micropython" if interpreter == "micropython" else "cpython")
    # the gateway's commands reach it over the same link
    out = tls_gateway.cli("devices", "send", dev.id, "status", "--json")
    assert json.loads(out.stdout)["result"]["boot_count"] == 1
    assert "TLS" not in dev.output()


# The heaps from which the 128 KB tests of plain MQTT pass with TLS up, their margins
# included (docs/security.md 5.4 gives the figures): the runtime's
# (tests/system/test_end_to_end.py) from 136 KB, as TLS takes some 5 KB of the unix
# port's heap (tls's context, 3 KB, the socket's, the client's module) and a
# config.set at 132 KB may find no block for the settings' code (592 bytes: answered
# no_ram); an update's
# (test_ota_device.py) from 140 KB, as the names the TLS client brings to update mode
# take the heap another table of names (some 8 KB on the 64-bit unix port). At 128 KB
# a device over TLS connects, says hello and answers a status command, but a
# config.set runs out of heap (no_ram).
TLS_HEAP = "136K"
TLS_UPDATE_HEAP = "140K"


def _heap_figures(
    gw: GatewayProcess, dev: DeviceProcess, record_property: Callable[[str, object], None]
) -> tuple[int, int]:
    """(free heap in its hello, free heap while it answers a status command), TLS up: printed and recorded."""
    shown = wait_for(lambda: (d := gw.device(dev.id))["online"] and d, 30, what="online over TLS")
    time.sleep(2)  # some telemetry over TLS first
    out = gw.cli("devices", "send", dev.id, "status", "--json")
    hello, status = shown["heap_free"], json.loads(out.stdout)["result"]["heap_free"]
    record_property(f"tls_heap_free_at_hello_{dev.heap}", hello)
    record_property(f"tls_heap_free_at_status_{dev.heap}", status)
    print(f"\nTLS up under -X heapsize={dev.heap}: free heap {hello} bytes in its hello, ", end="")
    print(f"{status} bytes while it answers a status command")
    return hello, status


def test_tls_comes_up_at_128k_and_the_device_says_its_free_heap(
    tmp_path: Path,
    tls_broker: Mosquitto,
    owners_ca: CaFiles,
    tls_gateway: GatewayProcess,
    devices: list[DeviceProcess],
    record_property: Callable[[str, object], None],
) -> None:
    dev = _device(tmp_path, tls_broker, owners_ca, heap=SMALL_HEAP)
    assert (dev.path / "pb" / "runtime.mpy").exists()
    devices.append(dev.start())
    hello_heap, status_heap = _heap_figures(tls_gateway, dev, record_property)
    assert hello_heap > 8 * 1024, f"only {hello_heap} bytes left of a 128 KB heap with TLS up"
    assert status_heap > 3 * 1024, f"only {status_heap} bytes left while it answers a command over TLS"
    # a setting, whose code is loaded on demand: taken, or answered no_ram, or, with no
    # block even for that, unanswered (before, a MemoryError here reset the device and the
    # command was lost): the device goes on and answers the next command. It is at the edge
    # still; TLS wants 136 KB.
    got = tls_gateway.cli(
        "devices", "send", dev.id, "config", "set", "thermostat.setpoint=18", "--json", check=False
    )
    reply = json.loads(got.stdout) if got.stdout.strip() else {}
    outcome = "taken" if reply.get("ok") else reply.get("error", {}).get("code", "unanswered")
    assert outcome in ("taken", "no_ram") or (
        "did not answer" in got.stderr and "no RAM to answer a command" in dev.output()
    ), f"{got.stdout} {got.stderr}\n--- device:\n{dev.output()[-3000:]}"
    print(f"config.set under -X heapsize={dev.heap} with TLS: {outcome}")
    pong = json.loads(tls_gateway.cli("devices", "send", dev.id, "ping", "--json").stdout)
    assert pong["ok"] and dev.output().count("booted (") == 1, f"{pong}\n{dev.output()[-3000:]}"


def test_with_tls_a_device_runs_as_at_128k_from_136k(
    tmp_path: Path,
    tls_broker: Mosquitto,
    owners_ca: CaFiles,
    tls_gateway: GatewayProcess,
    devices: list[DeviceProcess],
    record_property: Callable[[str, object], None],
) -> None:
    dev = _device(tmp_path, tls_broker, owners_ca, heap=TLS_HEAP)
    devices.append(dev.start())
    hello_heap, status_heap = _heap_figures(tls_gateway, dev, record_property)
    assert hello_heap > 8 * 1024, f"only {hello_heap} bytes left of a {TLS_HEAP} heap with TLS up"
    assert status_heap > 8 * 1024, f"only {status_heap} bytes left while it answers a command over TLS"
    # and takes a setting, the command a user sends most
    # (what loads the settings' code on demand: at 132 KB it often found no block)
    try:
        tls_gateway.cli(
            "devices",
            "send",
            dev.id,
            "config",
            "set",
            "thermostat.setpoint=18",
            "--timeout",
            "30",
            timeout=45,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- device:\n{dev.output()[-3000:]}") from None
    wait_for(lambda: dev.actuators().get("relay") is False, 10, what="relay off at 18 C")


def test_an_update_over_tls_commits_from_140k(
    tmp_path: Path,
    tls_broker: Mosquitto,
    owners_ca: CaFiles,
    devices: list[DeviceProcess],
    release2: Release,
    keys: ota_keys.Keys,
    record_property: Callable[[str, object], None],
) -> None:
    dev = _device(tmp_path, tls_broker, owners_ca, heap=TLS_UPDATE_HEAP, root=keys.root_bytes, trial_s=2)
    config = json.loads((dev.path / "config.json").read_text())
    (dev.path / "config.json").write_text(json.dumps({**config, **OTA_CONFIG}))
    dev.set_sensors(temperature=20.0)
    devices.append(dev.start())
    wait_for(lambda: "booted" in dev.output(), 15, what="device boot")
    srv = serve(tls_broker, dev, offer_of(release2, keys))  # (the gateway's side, on the plain listener)
    try:
        done = srv.wait_for(("committed", "failed", "rolled_back"), 120)
        assert done["state"] == "committed", (done, dev.output()[-3000:])
    finally:
        srv.close()
    assert running_set(dev) == (2, release2.sha256, ["eco", "thermostat"])
    # the free heap while the download runs over TLS (update mode, beside the link only)
    line = next(x for x in dev.output().splitlines() if "update mode: downloading, heap free" in x)
    heap = int(line.rsplit(" ", 1)[1])
    record_property(f"tls_heap_free_during_update_{dev.heap}", heap)
    print(f"\nfree heap during an update over TLS under -X heapsize={dev.heap}: {heap} bytes")
    assert heap > 8 * 1024, f"only {heap} bytes left while downloading over TLS"


def _retries(dev: DeviceProcess, why: str) -> list[int]:
    """The retry delays (ms) the device logged, if three failed connections said why."""
    lines = [line for line in dev.output().splitlines() if "broker: " in line and why in line]
    delays = [int(m.group(1)) for line in lines if (m := re.search(r"again in (\d+) ms", line))]
    return delays if len(delays) >= 3 else []


@pytest.mark.parametrize(
    ("broker", "interpreter", "why"),
    [
        ("impostor", "micropython", "TLS: The certificate is not correctly signed by the trusted CA"),
        ("misnamed", "micropython", "TLS: The certificate Common Name (CN) does not match"),
        ("impostor", "cpython", "CERTIFICATE_VERIFY_FAILED"),
        ("misnamed", "cpython", "IP address mismatch"),
    ],
    ids=["another-ca", "another-name", "another-ca-cpython", "another-name-cpython"],
)
def test_a_device_refuses_a_broker_certificate_it_was_not_told_to_trust(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    owners_ca: CaFiles,
    devices: list[DeviceProcess],
    broker: str,
    interpreter: str,
    why: str,
) -> None:
    # a broker whose certificate another CA signed, or the owner's CA for another name
    mosquitto: Mosquitto = request.getfixturevalue(broker)
    dev = _device(tmp_path, mosquitto, owners_ca, interpreter)
    before = _connections(mosquitto, dev.id)  # (the account's check when it was added)
    devices.append(dev.start())
    # it says why, and keeps trying with its backoff, alive
    delays = wait_for(lambda: _retries(dev, why), 30, what=f"three refusals saying {why!r}")
    assert delays[2] > delays[0], delays
    assert dev.running, dev.output()[-2000:]
    assert _connections(mosquitto, dev.id) == before


def _gateway_run(broker: Mosquitto, db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    url = broker.tls_url.with_credentials(*broker.operator()).url(secret=True)
    cmd = [str(PERMABETA), "gateway", "run", "--broker", url, "--db", str(db), "--api", "127.0.0.1:0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("trusting", ["owners-ca", "system-cas"])
def test_the_gateway_refuses_a_broker_certificate_it_was_not_told_to_trust(
    tmp_path: Path, impostor: Mosquitto, tls_broker: Mosquitto, owners_ca: CaFiles, trusting: str
) -> None:
    # another CA's certificate with --ca the owner's; the owner's CA without --ca (the system's CAs)
    if trusting == "owners-ca":
        done = _gateway_run(impostor, tmp_path / "gw.db", "--ca", str(owners_ca.cert))
    else:
        done = _gateway_run(tls_broker, tmp_path / "gw.db")
    assert done.returncode == 1, done.stdout + done.stderr
    hint = (
        "is --ca the CA that signed it?"
        if trusting == "owners-ca"
        else "give the CA that signed it with --ca FILE"
    )
    assert "its certificate is not trusted" in done.stderr and hint in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_gateway_names_a_ca_file_that_is_no_ca(
    tmp_path: Path, tls_broker: Mosquitto, owners_ca: CaFiles
) -> None:
    server = tls_broker.tls
    assert server is not None
    done = _gateway_run(tls_broker, tmp_path / "gw.db", "--ca", str(server.certfile))
    assert done.returncode == 1 and "not a CA certificate" in done.stderr, done.stderr


def test_broker_config_writes_a_tls_listener_with_the_ca(
    tmp_path: Path, owners_ca: CaFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir = owners_ca.key.parent
    server_cert(ca_dir, ["127.0.0.1"])  # (beside the CA, as `broker ca` writes it)
    out, db, port, tls_port = tmp_path / "broker", tmp_path / "gw.db", free_port(), free_port()
    listen = ["--out", str(out), "--db", str(db), "--listen", f"127.0.0.1:{port}"]
    assert main(["broker", "config", *listen, "--tls", str(tls_port)]) == 1
    assert "both --tls PORT and --ca DIR" in capsys.readouterr().err
    assert main(["broker", "config", *listen, "--tls", str(tls_port), "--ca", str(tmp_path)]) == 1
    assert "lacks ca.pem, server.pem, server.key" in capsys.readouterr().err
    assert main(["broker", "config", *listen, "--tls", str(tls_port), "--ca", str(ca_dir)]) == 0
    said = capsys.readouterr().out
    assert f"TLS on 127.0.0.1:{tls_port}" in said and f"--ca {owners_ca.cert}" in said
    broker = MosquittoProcess(out / "mosquitto.conf", port, out / "mosquitto.log")
    broker.start()
    try:
        password = (out / "gateway.password").read_text().strip()
        trusting = client_context(cafile=owners_ca.cert)
        assert connack(tls_port, "gateway", password, context=trusting) == 0
        assert connack(tls_port, "gateway", password + "x", context=trusting) != 0
        assert connack(port, "gateway", password) == 0  # (the plain listener beside it)
        with pytest.raises(ssl.SSLCertVerificationError):
            connack(tls_port, "gateway", password, context=client_context())  # (the system's CAs)
    finally:
        broker.stop()
