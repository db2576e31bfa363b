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
# The device's own code sees only the slots (pb/hal/app_partition.py,
# small: an image is written in update mode); this module is the rest:
# otadata, the bootloader, set_boot and marking an app valid.
import errno

from ..compat import fsync
from ..ota.files import file_sha256, size
from ..store import makedirs
from .app_partition import (  # noqa: F401 - the whole stand-in
    BLOCK,
    FOLDER,
    LABELS,
    MAGIC,
    NEW,
    OTADATA,
    PENDING,
    VALID,
    Partition,
    magic,
    mark_valid,
    otadata,
    save_otadata,
    set_boot,
)

_TMP = ".tmp"  # pb/store.py's suffix of a replacement being written

SLOT_SIZE = 0x180000  # partitions-4MiB-ota.csv: ota_0 at 0x10000, ota_1 after it

# the otadata states of ESP-IDF's esp_ota_img_states_t
INVALID = "invalid"
ABORTED = "aborted"
UNDEFINED = "undefined"  # an app esptool wrote: runs with no trial

_CHUNK = 256
_ERASED = b"\xff" * _CHUNK


class Flash:
    """One device's flash: the two app slots and otadata under root/flash.
    A slot file that is missing is made erased, size bytes (a blank chip).
    Partition is the esp32.Partition class bound to this flash."""

    def __init__(self, root, slot_size=SLOT_SIZE):
        self.dir = root + "/" + FOLDER
        self.otadata = self.dir + "/" + OTADATA
        makedirs(self.dir)
        for label in LABELS:
            if size(self.path(label)) < 0:
                _blank(self.path(label), slot_size)

        class BoundPartition(Partition):
            pass

        BoundPartition.dir = self.dir
        self.Partition = BoundPartition

    @property
    def running(self):
        """The slot boot() chose (None before it)."""
        return self.Partition.running

    @running.setter
    def running(self, label):
        self.Partition.running = label

    def path(self, label):
        return self.dir + "/" + label + ".bin"

    def load(self):
        """otadata, or None while it is blank (no update has been chosen),
        as ESP-IDF reads otadata that fails its CRC."""
        return otadata(self.dir)

    def save(self, data):
        """Replace otadata in one step: a power cut leaves the old or the
        new. None erases it (an empty record reads as blank)."""
        save_otadata(self.dir, data)

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
        return magic(self.path(label))

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
        set_boot(self.dir, self.running, label)

    def mark_valid(self):
        mark_valid(self.dir, self.running)

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


def boot_env(root="."):
    """boot(), for main.py's supervisor on the unix port: the environment
    that tells the device which image runs ("PB_IMAGE=<label> ")."""
    return "PB_IMAGE=%s " % boot(root).label


def boot(root, slot_size=SLOT_SIZE):
    """Power on the device whose flash is under root: the bootloader runs
    and returns the Partition to run (its class is the one to use)."""
    return Flash(root, slot_size).boot()


def _blank(path, n):
    with open(path, "wb") as f:
        for _ in range(n // _CHUNK):
            f.write(_ERASED)
        f.write(_ERASED[: n % _CHUNK])
        fsync(f)
