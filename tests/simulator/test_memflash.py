"""A device's flash kept in RAM (simulator/memflash.py): littlefs's
semantics (what was synced survives a power cut, what was not is lost or
torn), the firmware's own file code reaching it unchanged, and nothing of
it on disk."""

from __future__ import annotations

import errno
import io
import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.pb.ota import files
from firmware.pb.store import Store, makedirs, read_bytes, write_atomic
from simulator import memflash
from simulator.memflash import ROUTED, MemFlash

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"

# modules of the firmware that name open() or os's file calls, yet never
# touch a virtual device's flash: a board's or the unix port's alone
NOT_ON_A_VIRTUAL_FLASH = {
    "firmware.pb.compat",  # (fsync: routed where it is imported)
    "firmware.pb.hal.esp32",
    "firmware.pb.hal.host",
    "firmware.pb.hal.host_image",
    "firmware.pb.hal.power_cuts",
    "firmware.pb.hal.supervisor",
    "firmware.pb.hello",
    "firmware.pb.net.proof",
    "firmware.pb.net.serial_link",
    "firmware.pb.net.tty_host",
}


@pytest.fixture(autouse=True)
def routed() -> None:
    memflash.install()


def test_every_firmware_module_that_touches_files_is_routed() -> None:
    calls = re.compile(r"\bopen\(|\bos\.(stat|listdir|ilistdir|mkdir|rmdir|remove|rename|statvfs|fsync)\(")
    touching = set()
    for path in FIRMWARE.rglob("*.py"):
        if "features" in path.parts:
            continue
        if calls.search(path.read_text()):
            touching.add(".".join(path.relative_to(FIRMWARE.parent).with_suffix("").parts))
    missing = touching - set(ROUTED) - NOT_ON_A_VIRTUAL_FLASH
    assert not missing, f"firmware modules with file calls not routed to a flash in RAM: {sorted(missing)}"
    assert set(ROUTED) <= touching  # (and none listed for nothing)


def test_the_firmwares_own_records_live_in_ram_and_nothing_reaches_the_disk(tmp_path: Path) -> None:
    flash = MemFlash("th-1")
    base = flash.base
    makedirs(base + "/data/deep")
    store = Store(base + "/data")
    store.save("state", {"boot_count": 3})
    assert store.load("state") == {"boot_count": 3}
    makedirs(base + "/ota")
    write_atomic(base + "/ota/root.json", b'{"v":1}')
    assert read_bytes(base + "/ota/root.json") == b'{"v":1}'
    assert files.walk(base) == ["data/state.json", "ota/root.json"]
    assert files.size(base + "/ota/root.json") == 7 and files.is_dir(base + "/data/deep")
    assert 0 < files.free_bytes(base) <= memflash.CAPACITY
    files.remove_tree(base + "/data")
    assert files.walk(base) == ["ota/root.json"]
    assert not Path(memflash.PREFIX).exists()  # no folder on disk, not even the top one
    flash.export(str(tmp_path / "th-1"))  # unless asked for
    assert (tmp_path / "th-1" / "ota" / "root.json").read_bytes() == b'{"v":1}'


def test_the_factory_features_are_the_firmwares_own_folders_and_read_only() -> None:
    flash = MemFlash("th-2")
    makedirs(flash.base + "/features")
    flash.mount("features/thermostat", str(FIRMWARE / "features" / "thermostat"))
    manifest = read_bytes(flash.base + "/features/thermostat/manifest.json")
    assert manifest == (FIRMWARE / "features" / "thermostat" / "manifest.json").read_bytes()
    assert "manifest.json" in memflash.os.listdir(flash.base + "/features/thermostat")
    with pytest.raises(OSError) as e:
        memflash.open_routed(flash.base + "/features/thermostat/__init__.py", "wb")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        memflash.os.remove(flash.base + "/features/thermostat/manifest.json")
    assert e.value.errno == errno.EROFS


def test_a_full_flash_refuses_writes_and_says_so() -> None:
    full = [False]
    flash = MemFlash("th-3", capacity=8192, full=lambda: full[0])
    write_atomic(flash.base + "/a", b"x" * 5000)
    with pytest.raises(Exception) as e:
        write_atomic(flash.base + "/b", b"y" * 5000)
    assert "No space left" in str(e.value)
    assert read_bytes(flash.base + "/a") == b"x" * 5000 and flash.read("b") is None
    # and no torn b.tmp that read_bytes would take for b's pending replacement
    assert read_bytes(flash.base + "/b") is None and flash.read("b.tmp") is None
    full[0] = True
    assert files.free_bytes(flash.base) == 0
    with pytest.raises(OSError) as o:
        memflash.open_routed(flash.base + "/c", "wb")
    assert o.value.errno == errno.ENOSPC
    full[0] = False
    memflash.os.remove(flash.base + "/a")
    write_atomic(flash.base + "/b", b"y" * 5000)  # the space came back
    assert flash.used == 5000
    full[0] = True  # an existing file is not opened for writing either: nothing is emptied
    with pytest.raises(OSError):
        memflash.open_routed(flash.base + "/b", "wb")
    assert flash.read("b") == b"y" * 5000


def test_a_power_cut_keeps_what_was_synced_and_tears_what_was_not() -> None:
    flash = MemFlash("th-4")
    p = flash.base + "/blob.z"
    f = memflash.open_routed(p, "wb")
    f.write(b"a" * 100)
    f.flush()  # littlefs's sync
    f.write(b"b" * 100)
    old = memflash.open_routed(flash.base + "/record", "wb")
    old.write(b"old")
    old.close()
    g = memflash.open_routed(flash.base + "/record", "r+b")
    g.write(b"new")  # in place, unsynced
    flash.cut(random.Random(1))
    # what the cancelled code still does with the handles the cut left goes nowhere, and
    # raises nothing that would change the way it unwinds; its `with` blocks close them: no sync
    f.write(b"more")
    f.close()
    g.close()
    blob = flash.read("blob.z")
    assert blob is not None and blob.startswith(b"a" * 100) and set(blob[100:]) <= {ord("b")}
    assert flash.read("record") == b"old"
    assert flash.used == len(blob) + 3


def test_a_cut_tears_an_unsynced_tail_anywhere_from_none_to_all() -> None:
    kept = set()
    for seed in range(40):
        flash = MemFlash("th-5")
        f = memflash.open_routed(flash.base + "/log", "ab")
        f.write(b"x" * 10)
        flash.cut(random.Random(seed))
        kept.add(len(flash.read("log") or b""))
    assert 0 in kept and 10 in kept and len(kept) > 3


# ---- property: any sequence of writes, syncs, renames and removes, then a cut -----------

_op = st.one_of(
    st.tuples(st.just("open"), st.sampled_from("abc"), st.sampled_from(["wb", "ab", "r+b"])),
    st.tuples(st.just("write"), st.sampled_from("abc"), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("seek0"), st.sampled_from("abc")),
    st.tuples(st.just("flush"), st.sampled_from("abc")),
    st.tuples(st.just("close"), st.sampled_from("abc")),
    st.tuples(st.just("rename"), st.sampled_from("abc"), st.sampled_from("abc")),
    st.tuples(st.just("remove"), st.sampled_from("abc")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=30), st.integers(0, 2**32))
def test_after_any_cut_each_file_is_its_last_synced_content_or_that_plus_part_of_an_append(
    ops: list[tuple[Any, ...]], seed: int
) -> None:
    flash = MemFlash("th-p")
    handles: dict[str, Any] = {}  # a file's name -> its handle open for writing
    durable: dict[str, bytes] = {}  # the model: what each file holds for sure
    for kind, name, *arg in ops:
        path = f"{flash.base}/{name}"
        if kind == "open" and name not in handles:
            if arg[0] == "r+b" and name not in durable:
                continue
            handles[name] = memflash.open_routed(path, arg[0])
            durable.setdefault(name, b"")  # (created: there, empty)
        elif kind == "write" and name in handles:
            handles[name].write(arg[0])
        elif kind == "seek0" and name in handles:
            handles[name].seek(0)
        elif kind in ("flush", "close") and name in handles:
            (handles.pop(name).close if kind == "close" else handles[name].flush)()
            durable[name] = flash.read(name) or b""
        elif kind == "rename" and name in durable and arg[0] != name and not {name, arg[0]} & set(handles):
            memflash.os.rename(path, f"{flash.base}/{arg[0]}")
            durable[arg[0]] = durable.pop(name)
        elif kind == "remove" and name in durable and name not in handles:
            memflash.os.remove(path)
            del durable[name]
    live = {name: flash.read(name) for name in durable}
    flash.cut(random.Random(seed))
    for h in handles.values():
        h.close()  # (as the cancelled code's `with` blocks do: nothing synced now)
    for name in "abc":
        got = flash.read(name)
        if name not in durable:
            assert got is None
            continue
        now = live[name]
        assert got is not None and now is not None
        assert got == durable[name] or (now.startswith(got) and got.startswith(durable[name])), (
            name,
            durable[name],
            now,
            got,
        )
    assert flash.used == sum(len(flash.read(n) or b"") for n in "abc")


def test_renames_removes_and_open_files_keep_the_count_of_space_right(tmp_path: Path) -> None:
    flash = MemFlash("th-6")
    p = flash.base + "/a"
    write_atomic(p, b"0123456789")
    memflash.os.rename(p, p)  # onto itself: nothing happens
    assert flash.read("a") == b"0123456789" and flash.used == 10
    f = memflash.open_routed(p, "ab")
    memflash.os.remove(p)
    f.write(b"x" * 1000)  # (into a file no folder holds any more)
    f.close()
    assert flash.used == 0 and flash.walk("") == []
    write_atomic(flash.base + "/b", b"b" * 10)
    g = memflash.open_routed(flash.base + "/b", "ab")
    write_atomic(flash.base + "/c", b"c" * 10)
    memflash.os.rename(flash.base + "/c", flash.base + "/b")  # over the open one
    g.write(b"g" * 100)
    g.close()
    assert flash.read("b") == b"c" * 10 and flash.used == 10
    with pytest.raises(ValueError):
        memflash.open_routed(flash.base + "/t", "w")  # (binary modes only)


def test_features_of_the_same_code_under_two_names_both_import(tmp_path: Path) -> None:
    from simulator.loader import import_feature

    flash = MemFlash("th-7")
    for name in ("one", "two"):
        makedirs(f"{flash.base}/ota/a/{name}")
        write_atomic(f"{flash.base}/ota/a/{name}/__init__.py", b"X = 1\n")
    assert import_feature(flash.base + "/ota/a", "one").X == 1
    assert import_feature(flash.base + "/ota/a", "two").X == 1


_read = st.one_of(
    st.tuples(st.just("read"), st.one_of(st.none(), st.integers(-1, 40))),
    st.tuples(st.just("readline"), st.one_of(st.none(), st.integers(-1, 40))),
    st.tuples(st.just("readinto"), st.integers(0, 40)),
    st.tuples(st.just("seek"), st.integers(0, 80)),
)


@given(st.binary(max_size=60).map(lambda b: b.replace(b"\x00", b"\n")), st.lists(_read, max_size=12))
def test_a_file_reads_back_as_any_file_does(content: bytes, reads: list[tuple[str, Any]]) -> None:
    """read, readline, readinto, iteration and a text wrapper give what they
    give on a file of the same bytes (io.BytesIO)."""
    flash = MemFlash("th-r")
    with memflash.open_routed(flash.base + "/f", "wb") as f:
        f.write(content)
    ref = io.BytesIO(content)
    with memflash.open_routed(flash.base + "/f", "rb") as f:
        assert isinstance(f, memflash.MemFile)
        for op, arg in reads:
            if op == "readinto":
                a, b = bytearray(arg), bytearray(arg)
                assert f.readinto(a) == ref.readinto(b) and a == b
            elif op == "seek":
                assert f.seek(arg) == ref.seek(arg)
            else:
                assert getattr(f, op)(arg) == getattr(ref, op)(arg)
            assert f.tell() == ref.tell()
        assert list(f) == list(ref)
    with memflash.open_routed(flash.base + "/f", "r", encoding="latin-1", newline="") as t:
        assert t.read() == content.decode("latin-1")


def test_a_text_file_reads_with_the_newline_asked_for() -> None:
    data = b"a\rb\r\nc\n"
    flash = MemFlash("th-n")
    with memflash.open_routed(flash.base + "/f", "wb") as f:
        f.write(data)
    for newline in (None, "", "\n", "\r", "\r\n"):
        ref = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=newline)
        with memflash.open_routed(flash.base + "/f", "r", newline=newline) as t:
            assert t.readlines() == ref.readlines(), newline
