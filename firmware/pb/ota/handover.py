# Handing an update to update mode (docs/ota.md 4.2): when RAM is too short
# to download beside the features, the device resets into a mode where only
# the link and the download run. Small, as it is loaded when RAM is short.
import os

from ..compat import mem_free
from ..store import write_atomic

# RAM a download needs beside the running features (its modules are already
# loaded when this is checked); less free, and it runs in update mode
_OTA_RAM = 48000


def roomy(u):
    """True if a download fits in RAM beside the features (config
    "ota_mode": "lean" sends every download to update mode)."""
    cfg = u.dev.config
    if cfg.get("ota_mode") == "lean":
        return False
    free = mem_free()
    if free >= 0:
        free += u.dev.reserved()  # given back to a download
    return free < 0 or free >= cfg.get("ota_ram", _OTA_RAM)


def to_update_mode(u, offer=None):
    """Reset into update mode (pb/ota/update_mode.py); an offer not yet
    taken goes along on flash, a download under way is marked to go on
    there (resets come back to it, not to the runtime)."""
    d = u.dev
    if offer is not None:
        d.spare(True)  # a reset follows: what is kept for a bad day is for now
        write_atomic(u.offer_to, offer)  # (no copy: RAM is short)
    else:
        from . import flash

        job = flash.read_job(d.base)
        job["mode"] = "lean"
        flash.write_job(d.base, job)
    d.log("update: %d bytes of RAM free: downloading in update mode" % mem_free())
    d.stop("update")


def hold(u, payload, why):
    """RAM is short for a download beside the features, and one of them is
    busy (why): an offer that asks to wait for idle features (`"idle":true`,
    right after `"v"`: looked for in its first bytes, the offer is not
    parsed here) is kept on flash and said deferred, and the reset into
    update mode waits until none is busy; a later offer replaces it there, a
    cancel of it ends the wait. Any other offer goes to update mode now."""
    head = bytes(payload[:64])  # (a cancel whole; of an offer, v, idle and id)
    i = head.find(b'"id":"')
    uid = head[i + 6 : i + 18].decode() if i >= 0 else None
    if b'"op":"cancel"' in head:
        if uid is not None and uid == u.held:
            try:
                os.remove(u.offer_to)
            except OSError:
                pass
            u.held = None
            return
    elif b'"idle":true' in head and uid is not None:
        write_atomic(u.offer_to, payload)  # (no copy: RAM is short)
        if uid != u.held:
            from .report import status

            u.status(status(uid, "deferred", reason=why))
        if u.held is None:
            u.dev.spawn(_when_idle(u))
        u.held = uid
        return
    to_update_mode(u, payload)


async def _when_idle(u):
    from ..compat import sleep_ms

    d = u.dev
    until = d.now() + d.config.get("ota_busy_max_s", 3600)  # (pb/ota/download.py BUSY_MAX_S)
    while u.held is not None and d.features.busy(d.actuators) is not None and d.now() < until:
        await sleep_ms(2000)
    if u.held is not None:
        d.log("update: the features are idle: downloading in update mode")
        d.stop("update")  # (the offer waits on flash, as to_update_mode leaves it)


def take(u, kind, payload):
    """A root (ota/root) or a time statement (ota/time) the gateway sent
    (pb/ota/updates.py). A trial takes no root: it is sent again after."""
    if kind == "ota/time":
        _take_time(u, payload)
    elif u.boot.trial:
        u.idle()
    else:
        u.dev.spare(True)  # a reset follows (what is kept for a bad day is for now)
        _take_root(u, payload)


def _take_root(u, payload):
    """A root the gateway sent (docs/ota.md 1.1): kept on flash as it came,
    for the next boot to check on a nearly empty heap, and the device resets
    now. The bytes of a root refused before are not taken again."""
    import hashlib

    from ..store import read_bytes

    # (pb/ota/flash.py's ROOT_REFUSED and ROOT_NEXT, written out: its module
    # is more than a fragmented heap may have room for when a root comes)
    d = u.dev
    digest = "".join("%02x" % b for b in hashlib.sha256(payload).digest())
    if read_bytes(d.base + "/ota/root.refused") == digest.encode():
        d.spare(False)
        d.log("update: a root refused before was sent again: ignored")
        return
    write_atomic(d.base + "/ota/root.next.json", payload)  # (no copy: RAM is short)
    d.log("update: a new root came: checking it at boot")
    d.stop("update")


def _take_time(u, payload):
    """A time statement from the gateway (docs/ota.md 2.3): kept on flash,
    and verified now where the RAM rule of a download (roomy) says there is
    room; else where the checking code runs anyway (the download's check,
    the next boot)."""
    from ..compat import forget

    d = u.dev
    d.spare(True)  # (what is kept for loading code on demand: this code)
    try:
        from . import clock

        if clock.keep(d.base, payload) and roomy(u):
            clock.settle(d.base, d.id, d.hal)
    except MemoryError:
        pass  # a heap too fragmented now: kept on flash, or the gateway sends another
    forget(("pb.ota.clock", "pb.ota.roots", "pb.ota.trust", "pb.ota.ed25519", "pb.ota.sha512"))
    d.spare(False)
    u.idle()
