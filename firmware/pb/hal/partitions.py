# A stand-in for esp32.Partition on hosts (the unix port, CPython), where no
# ESP32 runs: the two OTA app slots of MicroPython's 4 MiB OTA partition table
# (ota_0, ota_1) and the otadata that says which one boots, kept in files
# under <root>/flash: ota_0.bin, ota_1.bin and otadata.json. It offers the
# part of esp32.Partition an image updater needs, with ESP-IDF's app rollback
# (CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE): set_boot() selects a slot as "new";
# the next boot() runs it "pending_verify"; a boot that finds it still pending
# (mark_app_valid_cancel_rollback() was never called) marks it "aborted" and
# runs the other slot again. boot() is the bootloader, called by a host's boot
# loop. Never loaded by the runtime, never provisioned to a device.
import errno
import json
import os

from ..compat import const, fsync
from ..errors import StoreError
from ..ota.files import file_sha256, size
from ..store import makedirs, read_bytes, write_atomic

_TMP = ".tmp"  # pb/store.py's suffix of a replacement being written

FOLDER = "flash"  # under the device's root folder
OTADATA = "otadata.json"
LABELS = ("ota_0", "ota_1")
BLOCK = 4096  # the flash's erase sector, the partitions' block size
SLOT_SIZE = 0x180000  # partitions-4MiB-ota.csv: ota_0 at 0x10000, ota_1 after it
MAGIC = 0xE9  # the first byte of every ESP32 app image

# the otadata states of ESP-IDF's esp_ota_img_states_t
NEW = "new"
PENDING = "pending_verify"
VALID = "valid"
INVALID = "invalid"
ABORTED = "aborted"
UNDEFINED = "undefined"  # an app esptool wrote: runs with no trial

_BASE = 0x10000
_SUBTYPE_OTA_0 = 0x10
_IOCTL_INIT = const(1)
_IOCTL_DEINIT = const(2)
_IOCTL_SYNC = const(3)
_IOCTL_BLOCK_COUNT = const(4)
_IOCTL_BLOCK_SIZE = const(5)
_IOCTL_BLOCK_ERASE = const(6)
_CHUNK = 256
_ERASED = b"\xff" * _CHUNK


class Partition:
    """One app slot, as esp32.Partition: Partition(Partition.RUNNING),
    Partition(Partition.BOOT) or Partition("ota_1"). Use the class a Flash
    binds (Flash(root).Partition, or type() of what boot() returns). Flash
    errors are OSError, as on the board."""

    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1
    flash = None  # type: Flash

    def __init__(self, id, block_size=BLOCK):
        flash = self.flash
        if flash is None:
            raise OSError(errno.ENODEV, "no flash bound: use Flash(root).Partition")
        if block_size != BLOCK:
            raise ValueError("block size %d: this flash has %d" % (block_size, BLOCK))
        if id == Partition.RUNNING:
            label = flash.running
            if label is None:
                raise OSError(errno.ENOENT, "nothing runs: boot() first")
        elif id == Partition.BOOT:
            label = flash.boot_label()
        elif id in LABELS:
            label = id
        else:
            raise OSError(errno.ENOENT, "no partition %r" % (id,))
        self.label = label
        self.index = LABELS.index(label)
        self.path = flash.path(label)
        self.size = size(self.path)

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
            raise OSError(errno.EINVAL, "a simple write takes whole blocks, not %d bytes" % n)
        pos = self.span(block_num, n, offset or 0)
        self.flash.check_writable(self.label)
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
        if op == _IOCTL_BLOCK_COUNT:
            return self.size // BLOCK
        if op == _IOCTL_BLOCK_SIZE:
            return BLOCK
        if op == _IOCTL_BLOCK_ERASE:
            pos = self.span(arg, BLOCK, 0)
            self.flash.check_writable(self.label)
            with open(self.path, "r+b") as f:
                f.seek(pos)
                for _ in range(BLOCK // _CHUNK):
                    f.write(_ERASED)
                fsync(f)
            return 0
        if op in (_IOCTL_INIT, _IOCTL_DEINIT, _IOCTL_SYNC):
            return 0
        return None

    def set_boot(self):
        """Boot this slot next, as esp_ota_set_boot_partition: its image is
        checked first (OSError if it is none) and, unless it is the one
        running, it boots in state "new", on trial."""
        self.flash.set_boot(self.label)

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        """The running app is good: no rollback at the next boot."""
        if cls.flash is None:
            raise OSError(errno.ENODEV, "no flash bound: use Flash(root).Partition")
        cls.flash.mark_valid()

    def span(self, block_num, n, offset):
        """The file position of n bytes at block_num + offset, inside the
        slot, or OSError."""
        pos = block_num * BLOCK + offset
        if block_num < 0 or offset < 0 or pos + n > self.size:
            raise OSError(errno.EINVAL, "%d bytes at %d are outside %s" % (n, pos, self.label))
        return pos


class Flash:
    """One device's flash: the two app slots and otadata under root/flash.
    A slot file that is missing is made erased, size bytes (a blank chip).
    Partition is the esp32.Partition class bound to this flash."""

    def __init__(self, root, slot_size=SLOT_SIZE):
        self.dir = root + "/" + FOLDER
        self.running = None  # the slot boot() chose
        self.otadata = self.dir + "/" + OTADATA
        makedirs(self.dir)
        for label in LABELS:
            if size(self.path(label)) < 0:
                _blank(self.path(label), slot_size)

        class BoundPartition(Partition):
            pass

        BoundPartition.flash = self
        self.Partition = BoundPartition

    def path(self, label):
        return self.dir + "/" + label + ".bin"

    def load(self):
        """otadata, or None while it is blank (no update has been chosen),
        as ESP-IDF reads otadata that fails its CRC."""
        raw = read_bytes(self.otadata)
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

    def save(self, data):
        """Replace otadata in one step: a power cut leaves the old or the
        new. None erases it (an empty record reads as blank)."""
        raw = b"" if data is None else json.dumps(data).encode("utf-8")
        try:
            _settle(self.otadata)
            write_atomic(self.otadata, raw)
        except (OSError, StoreError) as exc:
            raise OSError(errno.EIO, str(exc)) from exc

    def state(self, label):
        """The slot's otadata state, or None if it was never chosen."""
        data = self.load()
        entry = data["slots"].get(label) if data else None
        return entry.get("state") if entry else None

    def boot_label(self):
        """The slot the next boot tries first."""
        data = self.load()
        return data["boot"] if data else LABELS[0]

    def magic(self, label):
        with open(self.path(label), "rb") as f:
            first = f.read(1)
        return first[0] if first else -1

    def image_ok(self, label, entry):
        """The slot holds the image its entry was made for: the ESP32 magic
        and the SHA-256 taken at set_boot. (The bootloader checks the hash
        an image carries; a slot written since then never boots.)"""
        return self.magic(label) == MAGIC and file_sha256(self.path(label))[1] == entry.get("sha256")

    def boot(self):
        """The bootloader: choose the slot to run and return its Partition.
        A "new" slot runs "pending_verify"; a slot still pending was never
        marked valid and is "aborted" for the other one; a slot whose image
        fails its check is "invalid". Raises OSError if no slot can run."""
        data = self.load()
        changed = False
        if data is None:
            # blank otadata (a chip esptool wrote): ota_0 runs, with no trial
            data = {"v": 1, "boot": LABELS[0], "slots": {}}
            if self.magic(LABELS[0]) == MAGIC:
                data["slots"][LABELS[0]] = {
                    "state": UNDEFINED,
                    "sha256": file_sha256(self.path(LABELS[0]))[1],
                }
                changed = True
        slots = data["slots"]
        first = data["boot"]
        entry = slots.get(first)
        if entry and entry.get("state") == PENDING:
            entry["state"] = ABORTED
            first = LABELS[1 - LABELS.index(first)]
            changed = True
        chosen = None
        for label in (first, LABELS[1 - LABELS.index(first)]):
            entry = slots.get(label)
            state = entry.get("state") if entry else None
            # the slot otadata selects, or else a confirmed one to fall back on
            if state not in ((NEW, VALID, UNDEFINED) if label == first else (VALID, UNDEFINED)):
                continue
            if not self.image_ok(label, entry):
                entry["state"] = INVALID
                changed = True
                continue
            if state == NEW:
                entry["state"] = PENDING
                changed = True
            chosen = label
            break
        if chosen is not None and data["boot"] != chosen:
            data["boot"] = chosen
            changed = True
        if changed:
            self.save(data)
        if chosen is None:
            raise OSError(errno.ENOENT, "no bootable app in %s" % self.dir)
        self.running = chosen
        return self.Partition(chosen)

    def set_boot(self, label):
        running = self.running
        if running is not None and label != running and self.state(running) == PENDING:
            # as esp_ota_begin: an update starts from a confirmed app only
            raise OSError(errno.EACCES, "the running app is on trial: mark it valid first")
        if self.magic(label) != MAGIC:
            raise OSError(errno.EINVAL, "%s holds no app image" % label)
        data = self.load() or {"v": 1, "boot": LABELS[0], "slots": {}}
        entry = data["slots"].get(label)
        if label != running or entry is None:
            data["slots"][label] = {"state": NEW, "sha256": file_sha256(self.path(label))[1]}
        data["boot"] = label
        self.save(data)

    def mark_valid(self):
        running = self.running
        if running is None:
            raise OSError(errno.ENOENT, "nothing runs: boot() first")
        data = self.load()
        entry = data["slots"].get(running) if data else None
        if entry is None:
            raise OSError(errno.ENOENT, "otadata names no state for %s" % running)
        if entry.get("state") != VALID:
            entry["state"] = VALID
            self.save(data)

    def check_writable(self, label):
        """OSError unless label may be written or erased: never the running
        slot, and no slot while the running one is on trial (its rollback
        needs the other slot as it is)."""
        running = self.running
        if label == running:
            raise OSError(errno.EACCES, "%s is the running partition" % label)
        if running is not None and self.state(running) == PENDING:
            raise OSError(errno.EACCES, "the running app is on trial: mark it valid first")

    def load_factory(self, src):
        """What esptool does: the app image in file src into ota_0, otadata
        erased, so that boot() runs it with no trial. Only before a boot."""
        if self.running is not None:
            raise OSError(errno.EACCES, "%s is running" % self.running)
        slot = self.path(LABELS[0])
        n = size(src)
        if n < 0 or n > size(slot):
            raise OSError(errno.EINVAL, "%s does not fit %s" % (src, LABELS[0]))
        _blank(slot, size(slot))
        buf = bytearray(_CHUNK)
        with open(src, "rb") as fi, open(slot, "r+b") as fo:
            while True:
                k = fi.readinto(buf)
                if not k:
                    break
                fo.write(memoryview(buf)[:k])
            fsync(fo)
        self.save(None)


def boot(root, slot_size=SLOT_SIZE):
    """Power on the device whose flash is under root: the bootloader runs
    and returns the Partition to run (its class is the one to use)."""
    return Flash(root, slot_size).boot()


def _settle(path):
    """Finish a replacement that a power cut left as path's .tmp alone (on
    FAT, after write_atomic's remove and before its rename): the next
    write_atomic would truncate that one copy before its own rename."""
    if size(path) < 0 and size(path + _TMP) >= 0:
        os.rename(path + _TMP, path)


def _blank(path, n):
    with open(path, "wb") as f:
        for _ in range(n // _CHUNK):
            f.write(_ERASED)
        f.write(_ERASED[: n % _CHUNK])
        fsync(f)
