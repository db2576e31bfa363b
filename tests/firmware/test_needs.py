"""The need list (firmware/pb/ota/needs.py, docs/ota.md 4.3): what the check of
a manifest found the device lacks, read a line at a time by the download; a
module of the running runtime counts as held at its path, and a list of
another manifest or update is never used."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.pb.hal import Hal
from firmware.pb.ota import download, flash, needs

JOB = {"id": "5f2a9c01b7e4", "manifest": "ab" * 32}


def _entry(path: str, data: bytes) -> dict[str, Any]:
    return {
        "path": path,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "zsize": len(data) + 11,
        "zsha256": hashlib.sha256(b"z" + data).hexdigest(),
    }


def _read(base: Path, job: dict[str, Any] = JOB) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    head, entries = download.read_need(str(base), job)
    return head, list(entries)


def test_the_running_runtimes_modules_are_held_at_their_path_and_features_by_hash(tmp_path: Path) -> None:
    base = tmp_path / "dev"
    (base / "pb" / "net").mkdir(parents=True)
    (base / "features" / "thermostat").mkdir(parents=True)
    (base / "pb" / "runtime.py").write_bytes(b"same")
    (base / "pb" / "net" / "mqtt.py").write_bytes(b"old")
    (base / "features" / "thermostat" / "__init__.py").write_bytes(b"feature")
    stage = base / flash.STAGE
    stage.mkdir(parents=True)
    for name in ("manifest.json", "12" * 32 + ".z", "junk"):
        (stage / name).write_bytes(b"x")
    listed = [
        _entry("pb/runtime.py", b"same"),  # held: the same path, the same bytes
        _entry("pb/net/mqtt.py", b"new"),  # changed
        _entry("pb/store.py", b"same"),  # the same bytes at another path of the runtime
        _entry("thermostat/__init__.py", b"feature"),  # held by the factory set's features
        _entry("thermostat/manifest.json", b"{}"),
        _entry("thermostat/__init__.mpy", b"other form"),  # not this device's form
    ]
    needs.list_needs(str(base), JOB, listed, flash.FACTORY)
    head, entries = _read(base)
    lacking = [listed[1], listed[2], listed[4]]
    assert entries == lacking
    assert head["total"] == sum(f["zsize"] for f in lacking)
    assert head["need"] == 4096 + sum(f["size"] for f in listed[:5]) + sum(
        f["zsize"] + f["size"] for f in lacking
    )
    # staging keeps the manifest and the list, nothing else
    assert sorted(p.name for p in stage.iterdir()) == ["manifest.json", "need.json"]
    # and the install takes the held ones from where they are
    held, runtime = needs.holdings(str(base), flash.FACTORY)
    assert needs.held_copy(listed[0], held, runtime, str(base)) == f"{base}/pb/runtime.py"
    assert needs.held_copy(listed[3], held, runtime, str(base)) == f"{base}/features/thermostat/__init__.py"
    assert needs.held_copy(listed[2], held, runtime, str(base)) is None


@pytest.mark.parametrize("other", [{"manifest": "cd" * 32}, {"id": "0123456789ab"}])
def test_a_need_list_of_another_manifest_or_update_is_not_used(tmp_path: Path, other: dict[str, str]) -> None:
    base = tmp_path / "dev"
    (base / flash.STAGE).mkdir(parents=True)
    needs.list_needs(str(base), JOB, [_entry("eco/manifest.json", b"{}")], None)
    assert _read(base)[1] == [_entry("eco/manifest.json", b"{}")]
    with pytest.raises(ValueError):
        _read(base, JOB | other)


async def test_update_mode_with_a_list_it_cannot_use_has_the_manifest_checked_again_at_boot(
    tmp_path: Path,
) -> None:
    base = tmp_path / "dev"
    stage = base / flash.STAGE
    stage.mkdir(parents=True)
    manifest = b'{"signed": "{}", "signatures": []}'
    digest = hashlib.sha256(manifest).hexdigest()
    (stage / "manifest.json").write_bytes(manifest)
    (base / flash.NEED).write_bytes(b'{"manifest": "' + b"cd" * 32 + b'", "id": "5f2a9c01b7e4"}\n')
    job = {
        "id": "5f2a9c01b7e4",
        "manifest": digest,
        "size": len(manifest),
        "freshness": {},
        "counter": 2,
        "offered_at": time.time(),
        "phase": "downloading",
        "mode": "lean",
        "checked": digest,
    }
    (base / flash.JOB).write_text(json.dumps(job))
    asked: list[str] = []
    agent = download.Agent(
        str(base), "thermostat", 1, lambda *a: asked.append(a[1]), print, time.time, lambda: True, print
    )
    download.configure(agent, {"device": "th-1"}, Hal({}))
    agent.once = True
    await asyncio.wait_for(agent.run(), 10)
    assert agent.restart == "check" and not asked
    job = json.loads((base / flash.JOB).read_bytes())
    assert job["verify"] == "boot" and "checked" not in job and flash.to_check(job)


_HEX = st.text("0123456789abcdef", min_size=64, max_size=64)
_ENTRY = st.fixed_dictionaries(
    {
        "path": st.text(min_size=1, max_size=40),
        "size": st.integers(0, 2**31),
        "sha256": _HEX,
        "zsize": st.integers(0, 2**31),
        "zsha256": _HEX,
    }
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_ENTRY, max_size=8, unique_by=lambda f: f["sha256"]))
def test_a_need_list_reads_back_as_written(
    tmp_path_factory: pytest.TempPathFactory, listed: list[Any]
) -> None:
    base = tmp_path_factory.mktemp("dev")
    (base / flash.STAGE).mkdir(parents=True)
    listed = [f | {"path": "eco/" + str(i)} for i, f in enumerate(listed)]  # (files, not modules)
    needs.list_needs(str(base), JOB, listed, None)
    head, entries = _read(base)
    assert entries == listed and head["total"] == sum(f["zsize"] for f in listed)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.one_of(st.binary(max_size=80), st.builds(json.dumps, st.recursive(st.none(), st.lists))),
            max_size=4,
        ).map(lambda lines: b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines)),
    )
)
def test_a_damaged_need_list_is_refused_with_a_valueerror_only(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    base = tmp_path_factory.mktemp("dev")
    (base / flash.STAGE).mkdir(parents=True)
    head = json.dumps({"manifest": JOB["manifest"], "id": JOB["id"], "need": 1, "total": 1}).encode()
    for data in (content, head + b"\n" + content):
        (base / flash.NEED).write_bytes(data)
        try:
            for f in _read(base)[1]:
                assert isinstance(f["path"], str) and f["size"] >= 0 and len(f["sha256"]) == 64
        except ValueError:
            pass


def test_a_board_file_the_device_was_provisioned_with_is_held(tmp_path: Path) -> None:
    # a slot's runtime from a release that carried no board files: the
    # device runs its provisioned boards/<board>.json, which holds the bytes
    board = b'{"board": "thermostat-v1", "capabilities": {}}'
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "thermostat-v1.json").write_bytes(board)
    (tmp_path / "ota" / "a" / "pb").mkdir(parents=True)
    f = {
        "path": "pb/boards/thermostat-v1.json",
        "size": len(board),
        "sha256": hashlib.sha256(board).hexdigest(),
    }
    base = str(tmp_path)
    assert needs.held_copy(f, {}, base + "/ota/a", base) == base + "/boards/thermostat-v1.json"
    assert needs.held_copy(dict(f, sha256="0" * 64), {}, base + "/ota/a", base) is None
