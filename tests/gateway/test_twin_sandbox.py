"""The twin's sandbox (gateway/twin/sandbox.py, docs/twin.md 5): feature
code from a release runs in a process that cannot read the gateway's
database or keys, open sockets or start processes, sees none of the
gateway's environment, and is stopped with a clear error when it spins,
sleeps or eats memory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.paths import firmware_dir
from gateway.provision import board_for
from gateway.store import Store
from gateway.twin import sandbox
from gateway.twin.sandbox import Limits, SandboxError
from ota.keys import keygen

pytestmark = pytest.mark.slow

G0 = 1705276800.0
MANIFEST = {
    "name": "probe",
    "version": "1.0.0",
    "api": 1,
    "requires": ["temperature"],
    "permissions": {"reads": ["temperature"], "drives": [], "publishes": []},
}


def spec(seconds: float = 600.0) -> dict[str, Any]:
    return {
        "board": board_for("thermostat"),
        "utc_offset_min": 0,
        "start": G0,
        "end": G0 + seconds,
        "step_s": 10.0,
        "plant": {
            "kind": "room",
            "a": 5e-5,
            "g": 1.5e-3,
            "lag_s": 120.0,
            "humidity": 45.0,
            "occupancy": {"weekday": [0.0] * 24, "weekend": [0.0] * 24},
            "outdoor": {"kind": "fitted", "first_day": 0, "levels": [5.0], "cos": 0.0, "sin": 0.0},
        },
        "initial": {"temperature": 20.0},
        "settings": {},
        "commands": [],
        "meter": {
            "kind": "thermostat",
            "band": {"setpoint": 21.0, "schedule": [], "below": 1.0, "above": 1.5},
        },
    }


def files(probe: str) -> dict[str, bytes]:
    """The factory thermostat, a feature `probe` whose start() runs the
    code given, and the input."""
    out = {}
    folder = firmware_dir() / "features" / "thermostat"
    for name in ("__init__.py", "manifest.json"):
        out[f"features/thermostat/{name}"] = (folder / name).read_bytes()
    out["features/probe/__init__.py"] = ("import os\n\n\ndef start(ctx):\n" + _indent(probe)).encode()
    out["features/probe/manifest.json"] = json.dumps(MANIFEST).encode()
    out["input.json"] = json.dumps(spec()).encode()
    return out


def _indent(code: str) -> str:
    return "".join("    " + line + "\n" for line in code.strip().splitlines())


PROBE_LIMITS = Limits(cpu_s=20, wall_s=60.0)


def probe_error(code: str, limits: Limits = PROBE_LIMITS) -> str:
    """What the probe's start() raised, as the runtime reported it."""
    answer = sandbox.run(files(code), limits=limits)
    assert answer["ok"]
    error = answer["features"]["probe"].get("error")
    assert error is not None, "the probe did not raise"
    assert answer["features"]["thermostat"]["running"], "the thermostat runs on"
    return str(error)


@pytest.fixture
def secrets_on_disk(tmp_path: Path) -> dict[str, Path]:
    """A gateway's database and keys, as the gateway keeps them."""
    db = tmp_path / "gateway.db"
    Store(db).close()
    keys = keygen(tmp_path / "keys")
    return {"db": db, "key": keys.path / "gateway.key", "release_key": keys.path / "release.key"}


@pytest.mark.parametrize("what", ["db", "key", "release_key"])
def test_feature_code_cannot_read_the_gateway_s_database_or_keys(
    secrets_on_disk: dict[str, Path], what: str
) -> None:
    path = secrets_on_disk[what]
    assert path.read_bytes()  # (the gateway can)
    error = probe_error(
        f"""
try:
    data = open({str(path)!r}, "rb").read()
except OSError as exc:
    raise RuntimeError("refused: " + type(exc).__name__)
raise RuntimeError("read %d bytes" % len(data))
"""
    )
    assert "refused" in error, error


def test_feature_code_cannot_list_the_keys_nor_write_outside_its_folder(
    secrets_on_disk: dict[str, Path],
) -> None:
    keys = secrets_on_disk["key"].parent
    error = probe_error(f"raise RuntimeError(str(os.listdir({str(keys)!r})))")
    assert "refuses to list" in error or "Permission" in error, error
    target = secrets_on_disk["db"].parent / "planted.txt"
    error = probe_error(f"open({str(target)!r}, 'w').write('x')")
    assert not target.exists()
    assert "refuses to open" in error or "Permission" in error, error


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped when the gateway runs as root")
def test_feature_code_runs_as_nobody_when_the_gateway_runs_as_root() -> None:
    import pwd

    error = probe_error(
        'raise RuntimeError("uid=%d gid=%d groups=%r" % (os.getuid(), os.getgid(), os.getgroups()))'
    )
    nobody = pwd.getpwnam("nobody")
    assert f"uid={nobody.pw_uid} gid={nobody.pw_gid} groups=[]" in error


def test_feature_code_sees_none_of_the_gateway_s_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERMABETA_HOME", "/secret/place")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    error = probe_error('raise RuntimeError(" ".join(sorted(os.environ)))')
    assert "PERMABETA_HOME" not in error and "AWS_SECRET" not in error
    assert set(error.split(": ", 1)[1].split()) <= {"PATH", "LANG", "HOME", "LC_CTYPE"}


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.socket()",
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(('127.0.0.1', 1883))",
        "import subprocess\nsubprocess.run(['id'])",
        "os.system('id')",
        "import ctypes",
    ],
)
def test_feature_code_cannot_reach_the_network_or_start_processes(code: str) -> None:
    error = probe_error(code)
    # (refused by the runner's audit hook; ctypes, where Python's library is
    # root's alone, cannot even be found by nobody)
    assert "sandbox refuses" in error or "Permission" in error or "No module named 'ctypes'" in error, error


def test_a_busy_loop_is_stopped_with_a_clear_error() -> None:
    with pytest.raises(SandboxError) as caught:
        sandbox.run(files("while True:\n    pass"), limits=Limits(cpu_s=2, wall_s=30.0))
    assert caught.value.code == "cpu"
    assert str(caught.value) == "the feature code used more than 2 s of CPU and was stopped"


def test_code_that_waits_is_stopped_at_the_wall_clock_limit() -> None:
    with pytest.raises(SandboxError) as caught:
        sandbox.run(files("import time\ntime.sleep(600)"), limits=Limits(cpu_s=20, wall_s=3.0))
    assert caught.value.code == "time"
    assert str(caught.value) == "the feature code took longer than 3 s and was stopped"


def test_a_memory_hog_is_stopped_with_a_clear_error() -> None:
    with pytest.raises(SandboxError) as caught:
        sandbox.run(files("hog = bytearray(2 * 1024 ** 3)"), limits=Limits(memory=256 * 1024 * 1024))
    assert caught.value.code == "memory"
    assert str(caught.value) == "the feature code needed more than 256 MiB of memory and was stopped"


def test_a_memory_hog_in_an_event_handler_is_stopped_too() -> None:
    code = "ctx.on('tick', lambda now: bytearray(2 * 1024 ** 3))"
    with pytest.raises(SandboxError) as caught:
        sandbox.run(files(code), limits=Limits(memory=256 * 1024 * 1024))
    assert caught.value.code == "memory"


def test_the_sandbox_s_folder_is_gone_after_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    made = []
    real = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kw: Any) -> str:
        made.append(real(*args, **kw))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    probe_error("raise RuntimeError('x')")
    with pytest.raises(SandboxError):
        sandbox.run(files("while True:\n    pass"), limits=Limits(cpu_s=1, wall_s=30.0))
    assert len(made) == 2 and not any(Path(m).exists() for m in made)


def test_rebinding_what_the_hook_looks_at_opens_nothing_outside(secrets_on_disk: dict[str, Path]) -> None:
    # the hook's sets, os.path.realpath and the builtins are its own copies
    error = probe_error(
        "import sys, builtins\n"
        "m = sys.modules['__main__']\n"
        "m._DENIED_PREFIXES = (); m._DENIED.clear(); m._WRITES.clear(); m._LISTS.clear()\n"
        "os.path.realpath = lambda p, *a, **k: os.getcwd()\n"
        "builtins.any = lambda it: True\n"
        f"open({str(secrets_on_disk['key'])!r}, 'rb').read()"
    )
    assert "sandbox refuses" in error or "Permission" in error, error


def test_a_run_that_writes_without_end_is_stopped_holding_no_more_than_its_cap() -> None:
    with pytest.raises(SandboxError) as caught:
        sandbox.run(files("while True:\n    os.write(1, b'x' * 1048576)"), limits=PROBE_LIMITS)
    assert caught.value.code == "answer" and "MiB of output" in str(caught.value)


def test_a_gateway_that_is_not_root_runs_release_code_only_when_told_it_may(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    monkeypatch.delenv(sandbox.SAME_USER, raising=False)
    with pytest.raises(SandboxError) as caught:
        sandbox.run(files("pass"), limits=PROBE_LIMITS)
    assert caught.value.code == "unsafe" and sandbox.SAME_USER in str(caught.value)
    monkeypatch.setenv(sandbox.SAME_USER, "1")
    assert sandbox.run(files("pass"), limits=PROBE_LIMITS)["ok"]
