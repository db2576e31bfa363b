# The time a trust decision goes by (docs/ota.md 2.3): the gateway signs time
# statements, and the highest one a device has verified is a floor kept on
# flash (ota/trust.json "time", ms) that never moves back; "now" for a
# freshness statement is the later of the clock and the floor. A board that
# booted at 2000-01-01 thus still refuses what had expired by the gateway's
# time. Statements arrive in the runtime, whose heap cannot always hold
# Ed25519: the newest is kept on flash unverified (ota/time.json) and checked
# where the checking code is loaded anyway (the boot, the download agent's
# check) or where RAM allows; only a verified one moves the floor.
# Loaded for that and let go after.
from ..errors import StoreError, TrustError
from ..store import read_bytes, write_atomic
from . import flash

MAX_STATEMENT = 2048  # bytes of a time statement kept: a few signatures


def keep(base, payload):
    """Keep a time statement from the gateway on flash, unverified, for
    take(); one too large for a statement, or a full flash, loses it."""
    if len(payload) > MAX_STATEMENT:
        return False
    try:
        write_atomic(base + "/" + flash.TIME, bytes(payload))
    except StoreError:
        return False
    return True


def accept(floor, data, device, root, verify):
    """The floor (ms) after the time statement data (envelope bytes): its
    time, if it is for device, signed by a threshold of root's gateway role
    and above floor; else floor. Raises TrustError for a bad statement."""
    from . import trust

    raw, body, sigs = trust.open_envelope(data)
    trust.check_role(root, "gateway", raw, sigs, verify)
    t = trust.check_time(body, device)
    return t if t > floor else floor


def take(base, device, root, verify):
    """Verify the statement kept on flash, if any, raise the floor with it
    (written in one step: a power cut keeps the old floor or the new one),
    and let the statement go: a refused one never counts. Returns the floor."""
    path = base + "/" + flash.TIME
    data = read_bytes(path)
    floor = flash.floor_ms(base)
    if data is None:
        return floor
    try:
        t = accept(floor, data, device, root, verify)
    except TrustError as exc:
        print("pb: time statement refused: %s: %s" % (exc.code, exc.message))
        t = floor
    if t > floor:
        state = flash.read_json(base + "/" + flash.TRUST_STATE)
        if not isinstance(state, dict):
            state = {"freshness": 0}
        state["time"] = t
        flash.write_json(base + "/" + flash.TRUST_STATE, state)
    flash.remove(path)
    return t


def _verify(pub, msg, sig):
    from .ed25519 import verify

    return verify(pub, msg, sig)


def settle(base, device, hal):
    """At boot, and in the runtime when RAM allows: verify a statement kept
    on flash against the trusted root, and set a clock that is behind the
    floor to it. Returns the floor (ms)."""
    if read_bytes(base + "/" + flash.TIME) is not None:
        from .roots import trusted_root

        data = trusted_root(base)[1]
        root = None
        if data is not None:
            from .trust import load_root

            try:
                root = load_root(data, _verify)
            except TrustError:
                pass  # (the install says so: bad_root)
        if root is not None:
            take(base, device, root, _verify)
    floor = flash.floor_ms(base)
    if hal.time() < floor / 1000:
        hal.set_time(floor / 1000)
    return floor
