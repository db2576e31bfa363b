# Update statuses (docs/ota.md 3.4), the same from the runtime, from update
# mode and from the boot (which keeps them on flash for the runtime to send):
# the one builder of a status, and its sending; an outcome is kept on flash
# until a later one replaces it, and said again at every connect.
import json

from ..errors import StoreError
from ..store import write_atomic

KEPT = ("trial", "committed", "rolled_back", "failed")  # said at every connect


def status(uid, state, counter=None, reason=None, **more):
    """An update status (docs/ota.md 3.4) without dev and ts, which the
    sender adds (send_status); the one builder of it, for statuses sent
    at once and for those kept on flash until they can be."""
    msg = {"v": 1, "id": uid, "state": state}
    if counter is not None:
        msg["counter"] = counter
    if reason:
        msg["reason"] = reason
    for k in more:
        if more[k] is not None:
            msg[k] = more[k]
    return msg


def send_status(client, dev, msg, now, keep_to):
    """Send a status built by status(), with dev and, unless it has one, ts.
    An outcome (KEPT) is also written to keep_to (pb/ota/flash.py
    LAST_STATUS), to be said again at every connect until a later one
    replaces it: a reset right after must not leave the gateway without it.
    Returns its bytes if it is one to keep, else None."""
    from ..net.wire import topic

    msg["dev"] = dev
    if "ts" not in msg:
        msg["ts"] = now
    data = json.dumps(msg, separators=(",", ":")).encode("utf-8")  # (compact: bytes on the air)
    kept = msg["state"] in KEPT
    if kept:
        try:
            write_atomic(keep_to, data)
        except StoreError:
            pass  # a full flash: said now, if not again
    client.publish(topic(dev, "ota/status"), data, 1, True)
    return data if kept else None
