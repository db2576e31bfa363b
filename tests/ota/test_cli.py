"""`permabeta ota ...` through the real entry point (gateway.cli.main)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_maker_session(tmp_path: Path, capsys: pytest.CaptureFixture[str], features_dir: Path) -> None:
    keys, r1, r2 = str(tmp_path / "keys"), str(tmp_path / "r1"), str(tmp_path / "r2")
    thermostat = str(features_dir / "thermostat")

    code, out, _ = run(capsys, "ota", "keygen", "--out", keys, "--root-keys", "2", "--threshold", "2")
    assert code == 0 and "root-2.key" in out and "release.key" in out

    code, out, _ = run(
        capsys,
        "ota",
        "build",
        "--model",
        "thermostat",
        "--features",
        thermostat,
        "--version",
        "2026.11.1",
        "--out",
        r1,
        "--counter",
        "1",
    )
    assert code == 0 and "unsigned" in out
    # by default both forms of the modules: one release for every device of the model
    assert "3 files" in out and "py: 2 files" in out and "mpy: 2 files" in out

    code, _, err = run(capsys, "ota", "verify", r1, "--keys", keys)
    assert code == 1 and err.startswith("permabeta: unknown_key:") and err.count("\n") == 1

    code, out, _ = run(capsys, "ota", "sign", r1, "--keys", keys)
    assert code == 0 and "signed" in out

    code, out, _ = run(capsys, "ota", "verify", r1, "--keys", keys)
    assert code == 0 and out.startswith(f"OK {r1}: thermostat release 2026.11.1, counter 1, 3 files verified")
    assert "  py: 2 files" in out and "for CPython" in out
    assert "  mpy: 2 files" in out and "for MicroPython" in out

    code, out, _ = run(capsys, "ota", "verify", r1, "--root", str(tmp_path / "keys" / "root.1.json"))
    assert code == 0

    (features_dir / "thermostat" / "extra.py").write_text("X = 1\n")
    code, out, _ = run(
        capsys,
        "ota",
        "build",
        "--model",
        "thermostat",
        "--features",
        thermostat,
        "--version",
        "2026.11.2",
        "--out",
        r2,
        "--keys",
        keys,
        "--compile",
    )
    assert code == 0 and "signed by the release key" in out
    assert "py: REFUSED by CPython" in out and "mpy: 3 files" in out

    code, out, _ = run(capsys, "ota", "inspect", r2, "--against", r1)
    assert code == 0
    assert "+ thermostat/extra.mpy" in out and "- thermostat/__init__.py" in out
    assert "that runs mpy downloads 1 file," in out  # extra.mpy: r1 carried the rest already
    assert "WARNING: devices that run py (CPython" in out and "refuse this one" in out

    code, out, _ = run(capsys, "ota", "inspect", r2, "--json")
    assert code == 0 and json.loads(out)["counter"] > 1_000_000_000  # the default counter: the time

    code, out, _ = run(capsys, "ota", "inspect", r2, "--against", r1, "--json")
    download = json.loads(out)["download"]
    assert code == 0 and download["files"] == 1  # extra.mpy: __init__.mpy was in r1 too
    assert download["by_form"] == {"mpy": {"files": 1, "bytes": download["bytes"]}}

    code, out, _ = run(capsys, "ota", "rotate-root", "--keys", keys)
    assert code == 0 and "root version 2" in out
    code, out, _ = run(capsys, "ota", "verify", r2, "--keys", keys)
    assert code == 0 and "under root version 2" in out


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], features_dir: Path) -> None:
    code, _, err = run(
        capsys,
        "ota",
        "build",
        "--model",
        "thermostat",
        "--features",
        str(features_dir / "vent"),
        "--version",
        "1",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 1
    assert err.startswith("permabeta: vent needs humidity, vent, which no thermostat board can have")
    assert err.count("\n") == 1
    code, _, err = run(capsys, "ota", "verify", str(tmp_path / "r"))
    assert code == 1 and "needs --keys DIR" in err
    code, _, err = run(capsys, "ota", "sign", str(tmp_path), "--keys", str(tmp_path / "nokeys"))
    assert code == 1 and "holds no root.json" in err
    code, _, err = run(capsys, "ota", "inspect", str(tmp_path))
    assert code == 1 and "is not a release" in err
