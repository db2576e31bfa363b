# The part of a host's stand-in for esp32.Partition (pb/hal/partitions.py)
# that a device's own code uses to write an image: a slot's blocks, its
# size, the slot after the running one. Kept apart and small, as the image
# download runs in update mode on a small heap; choosing the slot to boot
# and marking the running one valid (otadata) load pb/hal/partitions.py.
# A board uses esp32.Partition instead. Never provisioned to a board.
import json
import os

from ..compat import fsync
from ..store import read_bytes

FOLDER = "flash"  # under the device's root folder
OTADATA = "otadata.json"
LABELS = ("ota_0", "ota_1")
BLOCK = 4096  # the flash's erase sector, the partitions' block size
PENDING = "pending_verify"
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
    dir = None  # <root>/flash, bound
    running = None  # the label the bootloader chose

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
        self.flash().set_boot(self.label)

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        """The running app is good: no rollback at the next boot."""
        cls.flash().mark_valid()

    @classmethod
    def flash(cls):
        """The whole flash (its otadata: pb/hal/partitions.py), as bound."""
        if cls.dir is None:
            raise OSError(19, "no flash bound: use Flash(root).Partition")
        from .partitions import Flash

        f = Flash(cls.dir[: -len(FOLDER) - 1])
        f.running = cls.running
        return f

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
        rollback needs the other slot as it is)."""
        running = self.running
        if self.label == running:
            raise OSError(13, "%s is the running partition" % running)  # EACCES
        data = otadata(self.dir)
        entry = data["slots"].get(running) if data and running else None
        if entry and entry.get("state") == PENDING:
            raise OSError(13, "the running app is on trial: mark it valid first")


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
