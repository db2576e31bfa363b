"""Provisioning: the complete filesystem of one device.

``device_files`` yields every file a device needs (boot.py, main.py, the
runtime pb/, the model's features, its board file, config.json); writing
them into a folder is ``provision_into``; copying them to a board over USB
serial is ``gateway.provision_serial.provision_port``.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware.pb.ids import valid_id
from firmware.pb.ota import flash

from .broker import GATEWAY_USER, HA_USER, BrokerUrl
from .errors import ConfigError
from .paths import firmware_dir

CONFIG_FILE = flash.CONFIG
ROOT_FILE = flash.ROOT  # the update keys this device trusts
CA_FILE = "ca.der"  # the broker's CA, for a device on mqtts:// (config broker.ca names it)
RESERVED_IDS = (GATEWAY_USER, HA_USER)  # broker users that are not devices
# Starting values for a host device's sensor file, so it runs at once.
_HOST_DEFAULTS = {"temperature": 20.0, "humidity": 45.0, "skin_temperature": 33.0, "battery": 100.0}


SENSORS_FILE = "hal/sensors.json"  # a host device's sensors (pb/hal/host.py)


@dataclass(frozen=True)
class Provisioned:
    """A device provisioned: into a folder (path) or onto a board (port)."""

    path: Path | None
    device: str
    model: str
    board: str
    username: str
    password: str
    features: tuple[str, ...]
    port: str | None = None


@dataclass(frozen=True)
class Device:
    """What a device is provisioned as: its board file, features and config.json,
    and the broker's CA (DER) it trusts on mqtts://."""

    board: dict[str, Any]
    features: list[str]
    config: dict[str, Any]
    ca: bytes | None = None

    @property
    def password(self) -> str:
        return str(self.config["broker"]["password"])

    def provisioned(self, path: Path | None = None, port: str | None = None) -> Provisioned:
        c = self.config
        return Provisioned(
            path,
            c["device"],
            c["model"],
            c["board"],
            c["broker"]["user"],
            self.password,
            tuple(self.features),
            port,
        )


def boards() -> dict[str, dict[str, Any]]:
    """Every board file shipped, by board name."""
    out = {}
    for p in sorted((firmware_dir() / "boards").glob("*.json")):
        b = json.loads(p.read_text())
        out[b["board"]] = b
    return out


def models() -> list[str]:
    return sorted({b["model"] for b in boards().values()})


def board_for(model: str, board: str | None = None) -> dict[str, Any]:
    """The board file for a model (its first board unless one is named)."""
    all_boards = boards()
    if board is not None:
        if board not in all_boards:
            raise ConfigError(f"no board {board!r} (known: {', '.join(all_boards)})")
        if all_boards[board]["model"] != model:
            raise ConfigError(f"board {board} is a {all_boards[board]['model']}, not a {model}")
        return all_boards[board]
    for b in all_boards.values():
        if b["model"] == model:
            return b
    raise ConfigError(f"unknown model {model!r} (known: {', '.join(models())})")


def uart_pins(port: str, hal: str) -> dict[str, Any]:
    """An ESP32's UART as --serial-line gives it, uartN:TX:RX (its number
    and pins): config.json's link. Raises ConfigError."""
    m = re.fullmatch(r"(uart[0-9]):([0-9]{1,2}):([0-9]{1,2})", port)
    if m is None or max(int(m[2]), int(m[3])) > 48:
        raise ConfigError(
            f"serial line {port!r}: give a path (/dev/ttyUSB0), repl (the board's REPL port) "
            "or an ESP32's UART and its pins, uartN:TX:RX (uart2:17:16)"
        )
    if hal != "esp32":
        raise ConfigError(
            f"serial line {port!r} is an ESP32's UART: on a Linux board give its path (/dev/ttyS1)"
        )
    if m[1] == "uart0":
        raise ConfigError("serial line uart0 is the ESP32's REPL UART: give repl to hand that port over")
    return {"serial": m[1], "tx": int(m[2]), "rx": int(m[3])}


def make_config(
    device: str,
    board: dict[str, Any],
    broker: BrokerUrl,
    password: str,
    *,
    hal: str = "host",
    telemetry_s: float = 10,
    sample_s: float = 1,
    keepalive: int = 30,
    wifi: tuple[str, str] | None = None,
    ca: bool = False,
    serial_line: tuple[str, int] | None = None,
    ble_link: bool = False,
) -> dict[str, Any]:
    """config.json of a device. ca: the device is given the broker's CA
    (CA_FILE), which mqtts:// needs and mqtt:// refuses. serial_line: (port,
    baud) of the line the device talks to the gateway on instead of the
    broker (docs/protocol.md 15). Raises ConfigError."""
    if not valid_id(device):
        raise ConfigError(
            f"device id {device!r}: use 1-32 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
    if device in RESERVED_IDS:
        raise ConfigError(f"device id {device!r} is reserved")
    if broker.tls and not ca:
        # a board has no store of public CAs: it trusts the one it is given, or nothing
        raise ConfigError(
            f"a device on {broker} trusts only the CA it is given: give the broker's CA certificate "
            "with --ca FILE (PEM or DER; `permabeta broker ca` makes one)"
        )
    if ca and not broker.tls:
        raise ConfigError(f"a CA was given, but the broker {broker} is plain MQTT: use mqtts:// for TLS")
    if broker.username not in (None, device):
        # a device always logs in as itself: that is what its ACL is keyed on
        raise ConfigError(f"the broker user of device {device} must be {device!r}, not {broker.username!r}")
    config: dict[str, Any] = {
        "v": 1,
        "device": device,
        "model": board["model"],
        "board": board["board"],
        "hal": hal,
        "broker": {
            "host": broker.host,
            "port": broker.port,
            "user": device,
            "password": password,
            "keepalive": keepalive,
        },
        "telemetry_ms": int(telemetry_s * 1000),
        "sample_ms": int(sample_s * 1000),
    }
    if ca:
        config["broker"]["cafile"] = CA_FILE
    if wifi is not None:
        config["wifi"] = {"ssid": wifi[0], "password": wifi[1]}
    if serial_line is not None:
        port, baud = serial_line
        if not port or not 50 <= baud <= 4_000_000:
            raise ConfigError(
                f"a serial line needs a port and a rate of 50-4000000 baud, not {port!r} at {baud}"
            )
        if len(port) > 128:
            raise ConfigError(f"serial line {port[:40]!r}...: a port of at most 128 characters")
        config["link"] = {"serial": port, "baud": baud}
        if port != "repl" and not port.startswith("/"):
            config["link"].update(uart_pins(port, hal))
        elif port != "repl" and hal == "esp32":
            raise ConfigError(
                f"serial line {port!r}: an ESP32 has no paths for ports: give repl (its USB port) "
                "or a UART and its pins, uartN:TX:RX (uart2:17:16)"
            )
    if ble_link:
        if serial_line is not None:
            raise ConfigError("a device talks on one line: a serial line or Bluetooth LE, not both")
        if not board.get("ble"):
            raise ConfigError(f"board {board['board']} has no Bluetooth LE radio (its board file has no ble)")
        config["link"] = {"ble": True}
    return config


def _compile(src: Path, name: str, arch: str | None = None) -> bytes:
    from ota.errors import BuildError
    from ota.mpy import compile_module

    try:
        return compile_module(src, name, arch)
    except BuildError as exc:
        raise ConfigError(str(exc)) from exc


STREAMS_FILE = "data/streams.json"  # the store record `streams` (firmware/pb/streams.py)


def initial_streams(board: dict[str, Any], features: Sequence[str]) -> bytes:
    """The owner's data choices a device is provisioned with: each stream's
    default (docs/protocol.md 12), until its owner says otherwise."""
    from .streams import catalogue, defaults

    fw = firmware_dir()
    manifests = {n: json.loads((fw / "features" / n / "manifest.json").read_bytes()) for n in features}
    return json.dumps({"choices": defaults(catalogue(board, manifests))}).encode()


def device_files(
    config: dict[str, Any],
    features: list[str],
    compile_mpy: bool = False,
    root: bytes | None = None,
    arch: str | None = None,
    ca: bytes | None = None,
) -> Iterator[tuple[str, bytes]]:
    """(path on the device, content) of every file of a device's filesystem.
    With compile_mpy, modules other than boot.py and main.py go as .mpy
    (arch: the board's -march, for native code). ca: the broker's CA
    certificate, DER (gateway.ca.read_ca)."""
    fw = firmware_dir()
    yield "boot.py", (fw / "boot.py").read_bytes()
    yield "main.py", (fw / "main.py").read_bytes()
    from ota.release import runtime_sources

    # the boot loader (never updated) and the factory runtime, as a release carries it
    ble = bool(boards().get(config["board"], {}).get("ble"))  # (its radio's code, if it has one)
    sources = [fw / "loader.py"] + [
        src for _, src in runtime_sources(fw / "pb", cpython=not compile_mpy, ble=ble)
    ]
    for name in features:
        folder = fw / "features" / name
        if not (folder / "manifest.json").exists():
            known = sorted(p.parent.name for p in (fw / "features").glob("*/manifest.json"))
            raise ConfigError(f"no feature {name!r} (known: {', '.join(known)})")
        yield f"features/{name}/manifest.json", (folder / "manifest.json").read_bytes()
        sources += sorted(folder.rglob("*.py"))
    for src in sources:
        rel = src.relative_to(fw).as_posix()
        if compile_mpy:
            # a feature's modules are named from its folder, as a release
            # names them, so both compile to the same bytes
            name = rel[len("features/") :] if rel.startswith("features/") else rel
            yield rel[:-3] + ".mpy", _compile(src, name, arch)
        else:
            yield rel, src.read_bytes()
    board = config["board"]
    board_file = (fw / "boards" / f"{board}.json").read_bytes()
    yield f"boards/{board}.json", board_file
    yield STREAMS_FILE, initial_streams(json.loads(board_file), features)
    if root is not None:
        yield ROOT_FILE, root
    if ca is not None:
        yield CA_FILE, ca
    yield CONFIG_FILE, (json.dumps(config, indent=1) + "\n").encode()


def device(
    model: str,
    device: str,
    broker: BrokerUrl,
    *,
    board: str | None = None,
    password: str | None = None,
    features: list[str] | None = None,
    hal: str = "host",
    wifi: tuple[str, str] | None = None,
    telemetry_s: float = 10,
    sample_s: float = 1,
    keepalive: int = 30,
    root: bytes | None = None,
    trial_s: float | None = None,
    close_repl: bool = False,
    ca: bytes | None = None,
    serial_line: tuple[str, int] | None = None,
    ble_link: bool = False,
) -> Device:
    """The device to provision, checked: its board, features and config.json
    (a new random broker password unless one is given). close_repl: the
    board's USB REPL closed at every boot (a shipped product; the command
    repl.open opens it until the next reset). ca: the broker's CA certificate
    (DER, gateway.ca.read_ca), which a broker on mqtts:// needs. Raises ConfigError."""
    b = board_for(model, board)
    feats = list(b.get("features", [])) if features is None else features
    password = password or broker.password or secrets.token_urlsafe(18)
    config = make_config(
        device,
        b,
        broker,
        password,
        hal=hal,
        telemetry_s=telemetry_s,
        sample_s=sample_s,
        keepalive=keepalive,
        wifi=wifi,
        ca=ca is not None,
        serial_line=serial_line,
        ble_link=ble_link,
    )
    if trial_s is not None:
        config["ota_trial_s"] = trial_s
    if close_repl:
        config["repl"] = "closed"
    if root is not None:
        _check_root(root)
    return Device(b, feats, config, ca)


def host_sensors(board: dict[str, Any]) -> bytes:
    """A host device's first sensors file: a value for each sensor of its board."""
    values = {
        n: _HOST_DEFAULTS.get(n, _HOST_DEFAULTS.get(c.get("quantity", n), 0.0))
        for n, c in board["capabilities"].items()
        if c["kind"] == "sensor"
    }
    return (json.dumps(values) + "\n").encode()


def provision_into(
    into: Path,
    model: str,
    device_id: str,
    broker: BrokerUrl,
    *,
    compile_mpy: bool = False,
    force: bool = False,
    root: bytes | None = None,
    image: Path | None = None,
    image_slot: int | None = None,
    **options: Any,
) -> Provisioned:
    """Write a complete host device into `into`; it then runs with
    `cd into && micropython main.py`. root: the root.json of the update keys
    it trusts (without one it refuses every update). image: an ESP32 app
    image the host device runs as its MicroPython image, in the first of two
    app partitions of image_slot bytes (docs/ota.md 4.11: the host's
    stand-in, pb/hal/partitions.py, which then ships too), as esptool
    flashes a board. options: those of device(). Raises ConfigError."""
    d = device(model, device_id, broker, root=root, **options)
    if into.exists() and any(into.iterdir()):
        old = into / CONFIG_FILE
        if not force:
            what = "another device" if old.exists() else "other files"
            raise ConfigError(f"{into} is not empty (holds {what}); use --force to replace it")
        for sub in ("pb", "features", "boards", "data", "ota"):
            shutil.rmtree(into / sub, ignore_errors=True)
    files = list(
        device_files(d.config, d.features, compile_mpy, root, ca=d.ca)
    )  # fail before writing anything
    if image is not None:
        files += _partitions_module(compile_mpy)
    for rel, data in files:
        path = into / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (into / CONFIG_FILE).chmod(0o600)
    if image is not None:
        from firmware.pb.hal.partitions import SLOT_SIZE, Flash

        shutil.rmtree(into / "flash", ignore_errors=True)
        Flash(str(into), image_slot or SLOT_SIZE).load_factory(str(image))
    sensors = into / SENSORS_FILE
    if not sensors.exists():
        sensors.parent.mkdir(exist_ok=True)
        sensors.write_bytes(host_sensors(d.board))
    return d.provisioned(path=into)


def _partitions_module(compile_mpy: bool) -> list[tuple[str, bytes]]:
    """The host's stand-in for the ESP32's app partitions, in the device's form."""
    from ota.mpy import compile_module

    rel = "pb/hal/partitions.py"
    src = firmware_dir() / rel
    if compile_mpy:
        return [(rel[:-3] + ".mpy", compile_module(src, rel))]
    return [(rel, src.read_bytes())]


def _check_root(root: bytes) -> None:
    from firmware.pb.errors import TrustError
    from firmware.pb.ota.ed25519 import verify
    from firmware.pb.ota.trust import load_root

    try:
        load_root(root, verify)
    except TrustError as exc:
        raise ConfigError(f"the root given is not a valid, self-signed root: {exc.message}") from exc
