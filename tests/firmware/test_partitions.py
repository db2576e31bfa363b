"""The file-backed stand-in for esp32.Partition (firmware/pb/hal/partitions.py):
the two OTA app slots and otadata of an ESP32, with ESP-IDF's app rollback,
under CPython, as a state machine against a model, and on the real
MicroPython unix port."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from firmware.pb.hal import app_partition
from firmware.pb.hal import partitions as pt

from ..support import micropython

A, B = pt.LABELS
BLOCKS = 4
SIZE = BLOCKS * pt.BLOCK
FACTORY = b"\xe9factory app"


class PowerCut(Exception):
    """The power failed: nothing after this point ran."""


def _flash(tmp_path: Path) -> pt.Flash:
    """A chip that esptool wrote: the factory app in ota_0, otadata blank."""
    flash = pt.Flash(str(tmp_path), SIZE)
    (tmp_path / "factory.bin").write_bytes(FACTORY)
    flash.load_factory(str(tmp_path / "factory.bin"))
    return flash


def _image(fill: int) -> bytes:
    return bytes([0xE9]) + bytes([fill]) * (SIZE - 1)


def _write(part: Any, data: bytes) -> None:
    for block in range(len(data) // pt.BLOCK):
        part.writeblocks(block, bytearray(data[block * pt.BLOCK : (block + 1) * pt.BLOCK]))


def _slot(tmp_path: Path, label: str) -> bytes:
    return (tmp_path / pt.FOLDER / (label + ".bin")).read_bytes()


def _update(tmp_path: Path, fill: int = 7) -> Any:
    """Boots the factory app and writes an image to the other slot, selected
    to boot next; returns the running partition."""
    running = _flash(tmp_path).boot()
    nxt = running.get_next_update()
    _write(nxt, _image(fill))
    nxt.set_boot()
    return running


def test_a_blank_chip_boots_the_factory_app_with_no_trial(tmp_path: Path) -> None:
    running = _flash(tmp_path).boot()
    part = type(running)
    assert running.info() == (0, 0x10, 0x10000, SIZE, A, False)
    assert part(part.RUNNING).info()[4] == part(part.BOOT).info()[4] == A
    assert running.get_next_update().info() == (0, 0x11, 0x10000 + SIZE, SIZE, B, False)
    assert pt.Flash(str(tmp_path), SIZE).state(A) == pt.UNDEFINED
    # a factory app never rolls back, marked or not
    assert pt.boot(str(tmp_path), SIZE).info()[4] == A


def test_a_chip_without_an_app_does_not_boot(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="no bootable app"):
        pt.boot(str(tmp_path), SIZE)


def test_ioctl_gives_block_count_and_size_and_erases_to_ff(tmp_path: Path) -> None:
    nxt = _flash(tmp_path).boot().get_next_update()
    assert nxt.ioctl(4, 0) == BLOCKS and nxt.ioctl(5, 0) == 4096 and nxt.ioctl(3, 0) == 0
    _write(nxt, _image(0))
    assert nxt.ioctl(6, 1) == 0
    got = bytearray(pt.BLOCK)
    nxt.readblocks(1, got)
    assert got == b"\xff" * pt.BLOCK
    nxt.readblocks(2, got)
    assert got == b"\x00" * pt.BLOCK


def test_a_write_with_an_offset_only_clears_bits_as_flash_does(tmp_path: Path) -> None:
    nxt = _flash(tmp_path).boot().get_next_update()
    nxt.writeblocks(0, b"\xf0\x0f", 10)
    nxt.writeblocks(0, b"\x3c\x3c", 10)
    got = bytearray(4)
    nxt.readblocks(0, got, 9)
    assert got == b"\xff\x30\x0c\xff"
    # without an offset the blocks are erased first
    nxt.writeblocks(0, bytearray(b"\x5a" * pt.BLOCK))
    nxt.readblocks(0, got, 9)
    assert got == b"\x5a" * 4


def test_reads_and_writes_outside_the_slot_are_refused(tmp_path: Path) -> None:
    nxt = _flash(tmp_path).boot().get_next_update()
    with pytest.raises(OSError):
        nxt.readblocks(BLOCKS, bytearray(1))
    with pytest.raises(OSError):
        nxt.writeblocks(BLOCKS - 1, b"xy", pt.BLOCK - 1)
    with pytest.raises(OSError):
        nxt.writeblocks(0, bytearray(100))  # a simple write takes whole blocks
    with pytest.raises(OSError):
        nxt.ioctl(6, BLOCKS)


def test_the_running_partition_is_never_written(tmp_path: Path) -> None:
    running = _flash(tmp_path).boot()
    before = _slot(tmp_path, A)
    with pytest.raises(OSError, match="running"):
        running.writeblocks(0, bytearray(pt.BLOCK))
    with pytest.raises(OSError, match="running"):
        running.writeblocks(0, b"\x00", 5)
    with pytest.raises(OSError, match="running"):
        running.ioctl(6, 0)
    assert _slot(tmp_path, A) == before


def test_set_boot_refuses_a_slot_without_an_app_image(tmp_path: Path) -> None:
    nxt = _flash(tmp_path).boot().get_next_update()
    _write(nxt, b"\x00" + _image(1)[1:])
    with pytest.raises(OSError, match="no app image"):
        nxt.set_boot()
    part = type(nxt)
    assert part(part.BOOT).info()[4] == A


def test_a_new_image_runs_on_trial_and_stays_once_marked_valid(tmp_path: Path) -> None:
    _update(tmp_path)
    flash = pt.Flash(str(tmp_path), SIZE)
    assert flash.state(B) == pt.NEW and flash.boot_label() == B
    running = flash.boot()
    assert running.info()[4] == B and flash.state(B) == pt.PENDING
    type(running).mark_app_valid_cancel_rollback()
    assert flash.state(B) == pt.VALID
    assert pt.boot(str(tmp_path), SIZE).info()[4] == B


def test_an_image_never_marked_valid_is_rolled_back_after_one_boot(tmp_path: Path) -> None:
    _update(tmp_path)
    assert pt.boot(str(tmp_path), SIZE).info()[4] == B
    flash = pt.Flash(str(tmp_path), SIZE)
    assert flash.boot().info()[4] == A
    assert flash.state(B) == pt.ABORTED and flash.boot_label() == A
    assert pt.boot(str(tmp_path), SIZE).info()[4] == A


def test_no_slot_is_written_while_the_running_app_is_on_trial(tmp_path: Path) -> None:
    _update(tmp_path)
    running = pt.boot(str(tmp_path), SIZE)
    other = running.get_next_update()
    with pytest.raises(OSError, match="on trial"):
        other.writeblocks(0, bytearray(pt.BLOCK))
    with pytest.raises(OSError, match="on trial"):
        other.set_boot()
    type(running).mark_app_valid_cancel_rollback()
    other.writeblocks(0, bytearray(pt.BLOCK))


def test_an_image_changed_after_set_boot_does_not_boot(tmp_path: Path) -> None:
    running = _update(tmp_path)
    running.get_next_update().writeblocks(1, b"\x00", 0)
    flash = pt.Flash(str(tmp_path), SIZE)
    assert flash.boot().info()[4] == A
    assert flash.state(B) == pt.INVALID


def test_a_cut_otadata_write_leaves_the_old_or_the_new(tmp_path: Path) -> None:
    _update(tmp_path)
    otadata = tmp_path / pt.FOLDER / "otadata.json"
    tmp = tmp_path / pt.FOLDER / "otadata.json.tmp"
    old = otadata.read_bytes()
    pt.boot(str(tmp_path), SIZE)  # ota_1 on trial: otadata rewritten
    new = otadata.read_bytes()
    # cut while the temporary file was written: the old otadata boots ota_1 again
    otadata.write_bytes(old)
    tmp.write_bytes(new[: len(new) // 2])
    flash = pt.Flash(str(tmp_path), SIZE)
    assert flash.state(B) == pt.NEW
    # cut between removing the old file and the rename (FAT): the new one holds
    otadata.unlink()
    tmp.write_bytes(new)
    assert flash.state(B) == pt.PENDING
    assert flash.boot().info()[4] == A and flash.state(B) == pt.ABORTED


def test_a_write_cut_after_a_rename_cut_short_keeps_the_otadata(tmp_path: Path) -> None:
    _update(tmp_path)
    otadata = tmp_path / pt.FOLDER / "otadata.json"
    # FAT: the old record removed, the power cut before the rename
    otadata.rename(tmp_path / pt.FOLDER / "otadata.json.tmp")

    def torn(path: str, data: bytes) -> None:
        Path(path + ".tmp").write_bytes(data[: len(data) // 2])
        raise PowerCut

    with mock.patch.object(app_partition, "write_atomic", torn), pytest.raises(PowerCut):
        pt.boot(str(tmp_path), SIZE)  # ota_1 to be on trial: cut as otadata is written
    flash = pt.Flash(str(tmp_path), SIZE)
    assert flash.state(B) == pt.NEW and flash.boot().info()[4] == B


def test_each_flash_binds_its_own_partition_class(tmp_path: Path) -> None:
    one = _flash(tmp_path / "one").boot()
    two = _flash(tmp_path / "two").boot()
    _write(two.get_next_update(), _image(3))
    assert type(one) is not type(two)
    assert _slot(tmp_path / "one", B) == b"\xff" * SIZE
    with pytest.raises(OSError, match="no flash"):
        pt.Partition(pt.Partition.RUNNING)


# ---- the state machine ---------------------------------------------------------------------------

CUTS = ("torn_tmp", "tmp_written", "old_removed")


class PartitionMachine(RuleBasedStateMachine):
    """Writes, erases, set_boot, boots with and without a mark, and power cuts
    (the backend dropped and built again from its files; an otadata write cut
    at each of its steps; a block written in part), against a model of
    ESP-IDF's rollback. The model's `sealed` is a slot's content when it was
    chosen to boot (set_boot, or esptool for the factory app)."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="pb-partitions-"))
        self.flash = _flash(self.root)
        factory = FACTORY + b"\xff" * (SIZE - len(FACTORY))
        self.m: dict[str, Any] = {
            "content": {A: bytearray(factory), B: bytearray(b"\xff" * SIZE)},
            "state": {},
            "sealed": {},
            "boot": None,
            "running": None,
        }
        self.trial_boots = {A: 0, B: 0}  # boots in a row an image ran unconfirmed
        self.reboot()

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- the model ---------------------------------------------------------

    def model_boot(self) -> str | None:
        m = self.m
        state, content, sealed = m["state"], m["content"], m["sealed"]
        if m["boot"] is None:
            m["boot"] = A
            if content[A][0] == 0xE9:
                state[A], sealed[A] = pt.UNDEFINED, bytes(content[A])
        first = m["boot"]
        if state.get(first) == pt.PENDING:
            state[first] = pt.ABORTED
            first = _other(first)
        for label in (first, _other(first)):
            s = state.get(label)
            if s not in ((pt.NEW, pt.VALID, pt.UNDEFINED) if label == first else (pt.VALID, pt.UNDEFINED)):
                continue
            if content[label][0] != 0xE9 or bytes(content[label]) != sealed[label]:
                state[label] = pt.INVALID
                continue
            if s == pt.NEW:
                state[label] = pt.PENDING
            m["boot"] = m["running"] = label
            return label
        m["running"] = None
        return None

    def model_set_boot(self, label: str) -> bool:
        m = self.m
        running = m["running"]
        if label != running and m["state"].get(running) == pt.PENDING:
            return False
        if m["content"][label][0] != 0xE9:
            return False
        if label != running or label not in m["state"]:
            m["state"][label] = pt.NEW
            m["sealed"][label] = bytes(m["content"][label])
        m["boot"] = label
        return True

    def writable(self, label: str) -> bool:
        running = self.m["running"]
        return label != running and self.m["state"].get(running) != pt.PENDING

    # ---- the real backend ---------------------------------------------------

    def part(self, label: str) -> Any:
        return self.flash.Partition(label)

    def reboot(self) -> None:
        """Power on: the backend built again from its files, the bootloader run."""
        expected = self.model_boot()
        assert expected is not None, "the device must always have an app to boot"
        self.flash = pt.Flash(str(self.root), SIZE)
        running = self.flash.boot()
        label = running.info()[4]
        assert label == expected
        # what boots is what was chosen to boot, byte for byte
        assert _slot(self.root, label) == self.m["sealed"][label]
        if self.flash.state(label) == pt.PENDING:
            self.trial_boots[label] += 1
        else:
            self.trial_boots[label] = 0
        self.trial_boots[_other(label)] = 0
        # an image never marked valid runs on one boot only
        assert self.trial_boots[label] <= 1

    @rule(label=st.sampled_from(pt.LABELS), block=st.integers(0, BLOCKS - 1), fill=st.integers(0, 255))
    def write_block(self, label: str, block: int, fill: int) -> None:
        data = bytearray([fill]) * pt.BLOCK
        if block == 0 and fill % 2:
            data[0] = 0xE9
        self.attempt(label, lambda: self.part(label).writeblocks(block, data), block * pt.BLOCK, data)

    @rule(
        label=st.sampled_from(pt.LABELS),
        at=st.integers(0, SIZE - 8),
        data=st.binary(min_size=1, max_size=8),
    )
    def write_bytes(self, label: str, at: int, data: bytes) -> None:
        old = self.m["content"][label][at : at + len(data)]
        anded = bytes(a & b for a, b in zip(old, data, strict=True))
        block, offset = divmod(at, pt.BLOCK)
        self.attempt(label, lambda: self.part(label).writeblocks(block, data, offset), at, anded)

    @rule(label=st.sampled_from(pt.LABELS), block=st.integers(0, BLOCKS - 1))
    def erase(self, label: str, block: int) -> None:
        self.attempt(label, lambda: self.part(label).ioctl(6, block), block * pt.BLOCK, b"\xff" * pt.BLOCK)

    def attempt(self, label: str, write: Any, at: int, result: bytes) -> None:
        before = _slot(self.root, label)
        if self.writable(label):
            write()
            self.m["content"][label][at : at + len(result)] = result
        else:
            # the running slot, or any while the running app is on trial
            with pytest.raises(OSError):
                write()
            assert _slot(self.root, label) == before

    @rule(fill=st.integers(0, 255))
    def update(self, fill: int) -> None:
        """A whole image into the next slot, then set_boot: an updater's run."""
        nxt = self.m["running"] and _other(self.m["running"])
        if not self.writable(nxt):
            return
        image = _image(fill)
        _write(self.part(nxt), image)
        self.m["content"][nxt][:] = image
        self.set_boot(nxt)

    @rule(label=st.sampled_from(pt.LABELS))
    def set_boot(self, label: str) -> None:
        if self.model_set_boot(label):
            self.part(label).set_boot()
        else:
            with pytest.raises(OSError):
                self.part(label).set_boot()

    @rule()
    def mark_valid(self) -> None:
        self.flash.Partition.mark_app_valid_cancel_rollback()
        self.m["state"][self.m["running"]] = pt.VALID
        self.trial_boots[self.m["running"]] = 0

    @rule()
    def power_cut(self) -> None:
        self.reboot()

    @rule(label=st.sampled_from(pt.LABELS), block=st.integers(0, BLOCKS - 1), fill=st.integers(0, 255))
    def cut_mid_block(self, label: str, block: int, fill: int) -> None:
        """The power fails while a block is written: part of it is on flash."""
        if not self.writable(label):
            return
        at = block * pt.BLOCK
        part = bytes([fill]) * (pt.BLOCK // 2)
        with open(self.root / pt.FOLDER / (label + ".bin"), "r+b") as f:
            f.seek(at)
            f.write(part)
        self.m["content"][label][at : at + len(part)] = part
        self.reboot()

    @rule(op=st.sampled_from(("set_boot", "mark_valid", "boot")), cut=st.sampled_from(CUTS))
    def cut_otadata_write(self, op: str, cut: str) -> None:
        """The power fails while an operation writes otadata (pb.store's
        write_atomic): in the temporary file, before the rename, or between
        removing the old file and the rename (FAT). Either the old otadata or
        the new one holds."""
        seen: dict[str, bool] = {}

        def cut_write(path: str, data: bytes) -> None:
            record, tmp = Path(path), Path(path + ".tmp")
            # with no record, a reader takes a complete .tmp: the new one holds
            seen["keeps_new"] = cut == "old_removed" or (cut == "tmp_written" and not record.exists())
            tmp.write_bytes(data if cut != "torn_tmp" else data[: len(data) // 2])
            if cut == "old_removed" and record.exists():
                record.unlink()
            raise PowerCut

        before = copy.deepcopy(self.m)
        allowed = True
        if op == "set_boot":
            label = _other(self.m["running"])
            allowed = self.model_set_boot(label)
            real = self.part(label).set_boot
        elif op == "mark_valid":
            self.m["state"][self.m["running"]] = pt.VALID
            real = self.flash.Partition.mark_app_valid_cancel_rollback
        else:
            self.model_boot()
            real = self.flash.boot
        with mock.patch.object(app_partition, "write_atomic", cut_write):
            try:
                real()
            except PowerCut:
                if not seen["keeps_new"]:
                    self.m = before
            except OSError:
                assert not allowed
            else:
                assert allowed  # and nothing was written
        self.reboot()

    @invariant()
    def flash_matches_the_model(self) -> None:
        m = self.m
        for label in pt.LABELS:
            assert _slot(self.root, label) == m["content"][label], label
            assert self.flash.state(label) == m["state"].get(label), label
        assert self.flash.boot_label() == (m["boot"] or A)
        assert self.flash.running == m["running"]
        part = self.flash.Partition
        assert part(part.RUNNING).info()[4] == m["running"]


def _other(label: str) -> str:
    return B if label == A else A


TestPartitionMachine = PartitionMachine.TestCase
TestPartitionMachine.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---- on MicroPython -----------------------------------------------------------------------------

# An updater's run, as it will go on a board: the next slot erased and written
# block by block from a 512-byte buffer (the image is never in RAM), chosen
# to boot; a reboot runs it on trial; marked valid, it stays after another.
UPDATE = """
import hashlib, json, sys
from pb.hal import partitions
root = json.load(open(sys.argv[1]))["root"]
size = 8 * 4096
with open(root + "/factory.bin", "wb") as f:
    f.write(b"\\xe9factory")
partitions.Flash(root, size).load_factory(root + "/factory.bin")
running = partitions.boot(root, size)
P = type(running)
nxt = P(P.RUNNING).get_next_update()
buf = bytearray(512)
for block in range(3):
    nxt.ioctl(6, block)
    for piece in range(4096 // 512):
        base = block * 4096 + piece * 512
        for i in range(512):
            buf[i] = (base + i) * 31 & 0xFF
        if base == 0:
            buf[0] = 0xE9
        nxt.writeblocks(block, buf, piece * 512)
nxt.set_boot()
out = {"first": running.info()[4], "next": nxt.info()[4], "blocks": nxt.ioctl(4, 0)}
flash = partitions.Flash(root, size)
running = flash.boot()
P = type(running)
out["trial"] = [running.info()[4], flash.state(running.info()[4])]
try:
    running.writeblocks(0, buf, 0)
    out["running_written"] = True
except OSError:
    out["running_written"] = False
h = hashlib.sha256()
for block in range(3):
    for piece in range(4096 // 512):
        running.readblocks(block, buf, piece * 512)
        h.update(buf)
out["sha256"] = "".join("%02x" % b for b in h.digest())
P.mark_app_valid_cancel_rollback()
flash = partitions.Flash(root, size)
running = flash.boot()
out["after"] = [running.info()[4], flash.state(running.info()[4])]
print(json.dumps(out))
"""


@pytest.mark.micropython
def test_an_image_written_block_by_block_boots_on_micropython(tmp_path: Path) -> None:
    got = micropython.run_json(UPDATE, {"root": str(tmp_path)}, heap="128K")
    image = bytearray((i * 31) & 0xFF for i in range(3 * pt.BLOCK))
    image[0] = 0xE9
    assert got == {
        "first": A,
        "next": B,
        "blocks": 8,
        "trial": [B, pt.PENDING],
        "running_written": False,
        "sha256": hashlib.sha256(image).hexdigest(),
        "after": [B, pt.VALID],
    }
    # the CPython backend reads the same flash the same way
    flash = pt.Flash(str(tmp_path), 8 * pt.BLOCK)
    assert flash.state(B) == pt.VALID and flash.boot_label() == B
    assert _slot(tmp_path, B)[: 3 * pt.BLOCK] == bytes(image)
    assert json.loads((tmp_path / pt.FOLDER / "otadata.json").read_bytes())["boot"] == B
