# The part of a host's stand-in for esp32.Partition (pb/hal/partitions.py)
# that a device's own code uses: a slot's blocks, its size, the slot after
# the running one, set_boot and marking the running app valid (otadata).
# Kept apart and small, as the image download runs in update mode on a
# small heap; the bootloader and what esptool does are in partitions.py.
# A board uses esp32.Partition instead. Never provisioned to a board.
import json
import os

from ..compat import fsync
from ..errors import StoreError
from ..store import read_bytes, write_atomic

FOLDER = "flash"  # under the device's root folder
OTADATA = "otadata.json"
LABELS = ("ota_0", "ota_1")
BLOCK = 4096  # the flash's erase sector, the partitions' block size
MAGIC = 0xE9  # the first byte of every ESP32 app image
# otadata states, of ESP-IDF's esp_ota_img_states_t (the others: partitions.py)
NEW = "new"
PENDING = "pending_verify"
VALID = "valid"
_TMP = ".tmp"  # pb/store.py's suffix of a replacement being written
_BASE = 0x10000
_SUBTYPE_OTA_0 = 0x10
_CHUNK = 256
_ERASED = b"\xff" * _CHUNK


class Partition:
    """One app slot, as esp32.Partition: Partition(Partition.RUNNING),
    Partition(Partition.BOOT) or Partition("ota_1"). Use a class bound to a
    device's flash (partitions.Flash(root).Partition, or the host HAL's
    partition()). Flash errors are OSError, as on the board."""

    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1
    dir = None  # type: str  # <root>/flash, bound
    running = None  # type: str  # the label the bootloader chose
    label = ""
    index = 0
    path = ""
    size = 0
    writable = False  # (check_writable passed)

    def __init__(self, id, block_size=BLOCK):
        if self.dir is None:
            raise OSError(19, "no flash bound: use Flash(root).Partition")  # ENODEV
        if block_size != BLOCK:
            raise ValueError("block size %d: this flash has %d" % (block_size, BLOCK))
        if id == Partition.RUNNING:
            label = self.running
            if label is None:
                raise OSError(2, "nothing runs: boot() first")  # ENOENT
        elif id == Partition.BOOT:
            data = otadata(self.dir)
            label = data["boot"] if data else LABELS[0]
        elif id in LABELS:
            label = id
        else:
            raise OSError(2, "no partition %r" % (id,))
        self.label = label
        self.index = LABELS.index(label)
        self.path = self.dir + "/" + label + ".bin"
        self.size = os.stat(self.path)[6]

    def __repr__(self):
        return "<Partition type=%d, subtype=%d, address=%d, size=%d, label=%s, encrypted=0>" % self.info()[:5]

    def info(self):
        """(type, subtype, address, size, label, encrypted), as on the board."""
        address = _BASE + self.index * self.size
        return (Partition.TYPE_APP, _SUBTYPE_OTA_0 + self.index, address, self.size, self.label, False)

    def get_next_update(self):
        """The slot an update writes while this one runs: the other one."""
        return type(self)(LABELS[1 - self.index])

    def readblocks(self, block_num, buf, offset=0):
        pos = self.span(block_num, len(buf), offset)
        with open(self.path, "rb") as f:
            f.seek(pos)
            f.readinto(buf)

    def writeblocks(self, block_num, buf, offset=None):
        """Without offset (the simple block protocol) the blocks are erased
        and written; with one (the extended protocol) the bytes are written
        on what is there, as flash does: bits only go from 1 to 0, so the
        range must have been erased first (ioctl 6). Raises OSError on the
        running slot, and on any slot while the running one is on trial."""
        n = len(buf)
        if offset is None and n % BLOCK:
            raise OSError(22, "a simple write takes whole blocks, not %d bytes" % n)  # EINVAL
        pos = self.span(block_num, n, offset or 0)
        self.check_writable()
        src = memoryview(buf)
        with open(self.path, "r+b") as f:
            if offset is None:
                f.seek(pos)
                f.write(src)
            else:
                old = bytearray(_CHUNK)
                done = 0
                while done < n:
                    k = min(_CHUNK, n - done)
                    f.seek(pos + done)
                    f.readinto(old)
                    for i in range(k):
                        old[i] &= src[done + i]
                    f.seek(pos + done)
                    f.write(memoryview(old)[:k])
                    done += k
            fsync(f)

    def ioctl(self, op, arg):
        """The block device's ioctl: 4 block count, 5 block size, 6 erase
        block arg (to 0xFF; OSError where a write would raise one)."""
        if op == 4:
            return self.size // BLOCK
        if op == 5:
            return BLOCK
        if op == 6:
            pos = self.span(arg, BLOCK, 0)
            self.check_writable()
            with open(self.path, "r+b") as f:
                f.seek(pos)
                for _ in range(BLOCK // _CHUNK):
                    f.write(_ERASED)
                fsync(f)
            return 0
        if op in (1, 2, 3):  # init, deinit, sync
            return 0
        return None

    def set_boot(self):
        """Boot this slot next, as esp_ota_set_boot_partition: its image is
        checked first (OSError if it is none) and, unless it is the one
        running, it boots in state "new", on trial."""
        set_boot(self.dir, self.running, self.label)

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        """The running app is good: no rollback at the next boot."""
        if cls.dir is None:
            raise OSError(19, "no flash bound: use Flash(root).Partition")
        mark_valid(cls.dir, cls.running)

    def span(self, block_num, n, offset):
        """The file position of n bytes at block_num + offset, inside the
        slot, or OSError."""
        pos = block_num * BLOCK + offset
        if block_num < 0 or offset < 0 or pos + n > self.size:
            raise OSError(22, "%d bytes at %d are outside %s" % (n, pos, self.label))
        return pos

    def check_writable(self):
        """OSError unless this slot may be written or erased: never the
        running slot, and no slot while the running one is on trial (its
        rollback needs the other slot as it is). Checked once per object,
        as ESP-IDF checks at esp_ota_begin: a write reads no otadata."""
        if self.writable:
            return
        running = self.running
        if self.label == running:
            raise OSError(13, "%s is the running partition" % running)  # EACCES
        data = otadata(self.dir)
        entry = data["slots"].get(running) if data and running else None
        if entry and entry.get("state") == PENDING:
            raise OSError(13, "the running app is on trial: mark it valid first")
        self.writable = True


def otadata(folder):
    """otadata, or None while it is blank (no update has been chosen), as
    ESP-IDF reads otadata that fails its CRC."""
    raw = read_bytes(folder + "/" + OTADATA)
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    if (
        not isinstance(data, dict)
        or data.get("boot") not in LABELS
        or not isinstance(data.get("slots"), dict)
    ):
        return None
    return data


def save_otadata(folder, data):
    """Replace otadata in one step: a power cut leaves the old or the new.
    None erases it (an empty record reads as blank)."""
    path = folder + "/" + OTADATA
    raw = b"" if data is None else json.dumps(data).encode("utf-8")
    try:
        _settle(path)
        write_atomic(path, raw)
    except (OSError, StoreError) as exc:
        raise OSError(5, str(exc)) from exc  # EIO


def magic(path):
    with open(path, "rb") as f:
        first = f.read(1)
    return first[0] if first else -1


def set_boot(folder, running, label):
    """esp_ota_set_boot_partition for the slot label, running running."""
    from ..ota.files import file_sha256

    data = otadata(folder)
    entry = data["slots"].get(running) if data and running else None
    if running is not None and label != running and entry and entry.get("state") == PENDING:
        # as esp_ota_begin: an update starts from a confirmed app only
        raise OSError(13, "the running app is on trial: mark it valid first")
    path = folder + "/" + label + ".bin"
    if magic(path) != MAGIC:
        raise OSError(22, "%s holds no app image" % label)
    data = data or {"v": 1, "boot": LABELS[0], "slots": {}}
    if label != running or data["slots"].get(label) is None:
        data["slots"][label] = {"state": NEW, "sha256": file_sha256(path)[1]}
    data["boot"] = label
    save_otadata(folder, data)


def mark_valid(folder, running):
    """esp_ota_mark_app_valid_cancel_rollback for the running slot."""
    if running is None:
        raise OSError(2, "nothing runs: boot() first")
    data = otadata(folder)
    entry = data["slots"].get(running) if data else None
    if entry is None:
        raise OSError(2, "otadata names no state for %s" % running)
    if entry.get("state") != VALID:
        entry["state"] = VALID
        save_otadata(folder, data)


def _settle(path):
    """Finish a replacement that a power cut left as path's .tmp alone (on
    FAT, after write_atomic's remove and before its rename): the next
    write_atomic would truncate that one copy before its own rename."""
    if _size(path) < 0 and _size(path + _TMP) >= 0:
        os.rename(path + _TMP, path)


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1
