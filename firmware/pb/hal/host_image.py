# A host's MicroPython image (docs/ota.md 4.11): the app partitions of the
# stand-in (pb/hal/app_partition.py), where main.py's supervisor ran its
# bootloader. Loaded only where an image is in question, so that the names
# of this code take no RAM in a device's other boots.
import json
import os

from ..store import read_bytes, write_atomic


def partition(root):
    """The esp32.Partition class of the host's slots, the running one as its
    bootloader chose (PB_IMAGE); None without slots."""
    label = os.getenv("PB_IMAGE")
    if not label:
        return None
    from .app_partition import FOLDER, Partition

    class Running(Partition):
        pass

    Running.dir = root + "/" + FOLDER
    Running.running = label
    return Running


def image_valid(root):
    """mark_app_valid_cancel_rollback without loading the slots' code: a
    trial's commit runs on what RAM the set left."""
    path = root + "/flash/otadata.json"
    data = json.loads(read_bytes(path) or b"null")
    entry = data["slots"].get(os.getenv("PB_IMAGE")) if isinstance(data, dict) else None
    if not isinstance(entry, dict):
        raise OSError(2, "otadata names no state for the running app")
    if entry.get("state") != "valid":
        entry["state"] = "valid"
        write_atomic(path, json.dumps(data).encode("utf-8"))
