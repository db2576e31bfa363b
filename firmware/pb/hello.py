# The hello message (docs/protocol.md 3.1), built when it is sent: at each
# connect and after what runs changed. Loaded on demand and let go after,
# so its code takes no RAM between times.
import json

from . import API, PROTOCOL, VERSION
from .compat import mem_free
from .errors import StoreError
from .net import wire
from .store import read_bytes, write_atomic

# pb/ota/flash.py's IMAGES and HELLO: not imported here, where a set on trial
# leaves a heap at 128 KB without room for that module
IMAGES = "ota/images.json"
HELLO = "data/hello.json"


def build(d):
    import sys

    return {
        "v": wire.VERSION,
        "proto": PROTOCOL,
        "dev": d.id,
        "model": d.config["model"],
        "board": d.config["board"],
        "runtime": VERSION,
        "api": API,
        "platform": sys.implementation.name,
        "features": d.features.status(),
        "caps": sorted(d.hal.caps),
        "addons": list(d.hal.plugged),
        "heap_free": mem_free(),
        "reset_cause": d.reset_cause,
        "boot_count": d.state.get("boot_count", 0),
        "keepalive": d.keepalive,
        "telemetry_s": d.telemetry_ms / 1000,
        "ota": ota(d),
        "ts": d.now(),
        "utc_offset_min": d.features.utc_offset_min,
        "streams": d.hide[0] if d.hide is not None else {},
    }


def ota(d):
    """updates.info(), and the version of the MicroPython image that runs as
    the release that wrote it named it (null: an image no release wrote,
    the one flashed; absent: none ever did, docs/ota.md 4.11)."""
    info = d.updates.info()
    data = read_bytes(d.base + "/" + IMAGES)
    try:
        known = json.loads(data) if data is not None else None
    except ValueError:
        known = None
    if known is not None:
        try:
            import esp32

            label = esp32.Partition(esp32.Partition.RUNNING).info()[4]  # type: ignore[arg-type]
        except ImportError:  # the simulator's HAL says it, a host's supervisor too
            import os

            label = getattr(d.hal, "image", None) or os.getenv("PB_IMAGE")
        info["image"] = known.get(label) if isinstance(known, dict) else None
    return info


def keep(d, hello):
    """Write hello (JSON bytes) to data/hello.json (pb/ota/flash.py), which update mode says
    hello with; only when what matters changed, to spare the flash. Returns
    the digest of what matters, for the next time."""
    import hashlib

    try:
        h = json.loads(hello)
        for k in ("ts", "heap_free"):
            h.pop(k, None)
        key = hashlib.sha256(json.dumps(h).encode("utf-8")).digest()[:8]
        h = None
        if key != d.hello_key:
            write_atomic(d.base + "/" + HELLO, hello)
    except (MemoryError, StoreError):
        return d.hello_key  # not kept (a fragmented heap, a full flash): next time
    return key
