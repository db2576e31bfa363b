# The permabeta device protocol, sans-I/O: topic names and the JSON control
# messages, their limits and their full validation. docs/protocol.md is the
# spec. The gateway and the tests use this module; it builds on pb/net/wire.py,
# the lean core the device itself loads, so both ends agree by construction.
from ..errors import ProtocolError
from ..ids import MAX_ID, valid_id
from ..net.wire import MAX_DEPTH, MAX_MESSAGE, ROOT, VERSION, dumps, nesting_error, scan, topic
from ..net.wire_in import OPS, loads, reply_error, reply_ok, shown

__all__ = [
    "MAX_DEPTH",
    "MAX_ID",
    "MAX_INT",
    "MAX_MESSAGE",
    "OPS",
    "ROOT",
    "VERSION",
    "reply_error",
    "reply_ok",
    "topic",
    "valid_id",
]

# Message kinds by direction.
UP = ("hello", "state", "telemetry", "reply", "event")  # device -> gateway
DOWN = ("cmd",)  # gateway -> device

# Field types: s str, i int, n number, b bool, d object, l array, a anything.
_SCHEMAS = {
    "hello": (
        ("v", "i", 1),
        ("proto", "i", 0),
        ("dev", "s", 1),
        ("model", "s", 1),
        ("board", "s", 1),
        ("runtime", "s", 1),
        ("api", "i", 1),
        ("features", "d", 1),
        ("caps", "l", 1),
        ("heap_free", "i", 1),
        ("reset_cause", "s", 1),
        ("boot_count", "i", 1),
        ("keepalive", "i", 1),
        ("telemetry_s", "n", 1),
        ("ts", "n", 0),
        ("utc_offset_min", "i", 0),
        ("streams", "d", 0),
        ("addons", "l", 0),
    ),
    "state": (("v", "i", 1), ("dev", "s", 1), ("state", "s", 1), ("ts", "n", 0), ("reason", "s", 0)),
    "telemetry": (
        ("v", "i", 1),
        ("dev", "s", 1),
        ("seq", "i", 1),
        ("ts", "n", 1),
        ("sensors", "d", 1),
        ("actuators", "d", 1),
        ("features", "d", 1),
    ),
    "event": (
        ("v", "i", 1),
        ("dev", "s", 1),
        ("ts", "n", 1),
        ("kind", "s", 1),
        ("feature", "s", 0),
        ("message", "s", 0),
    ),
    "cmd": (("v", "i", 1), ("id", "s", 1), ("op", "s", 1), ("args", "d", 0)),
    "reply": (
        ("v", "i", 1),
        ("dev", "s", 1),
        ("id", "s", 1),
        ("ok", "b", 1),
        ("result", "a", 0),
        ("error", "d", 0),
    ),
}

STATES = ("online", "offline")

# The largest integer a numeric field may hold (2**53 - 1): what every JSON
# parser reads exactly and SQLite stores exactly, as an integer or a real.
MAX_INT = 9007199254740991
# (lowest, highest) of each integer or number field; (0, MAX_INT) if not named.
_BOUNDS = {
    "heap_free": (-1, MAX_INT),
    "keepalive": (0, 65535),
    "proto": (0, 65535),
    "utc_offset_min": (-720, 840),
}
# The protocol levels a hello states (section 3.1; none stated is level 1):
# the gateway serves every level from the lowest it has not retired up; a
# device of a higher level than it knows is served as the highest it knows.
PROTOCOLS = (1, 2)
# The shape of hello's objects: what the gateway stores and lists.
_FEATURE = (("version", "s"), ("enabled", "b"), ("running", "b"), ("error", "s"), ("waiting", "l"))
_OTA = (("counter", "i"), ("state", "s"), ("root", "i"), ("update", "s"))


def bounds(name):
    """(lowest, highest) value of the integer or number field name."""
    return _BOUNDS.get(name, (0, MAX_INT))


def parse_topic(t):
    """(device id, kind) of a protocol topic. Raises ProtocolError
    'unknown_topic' or 'bad_device_id'."""
    parts = t.split("/")
    if len(parts) < 3 or parts[0] != ROOT:
        raise ProtocolError("unknown_topic", "not a protocol topic: %r" % t[:80])
    if not valid_id(parts[1]):
        raise ProtocolError("bad_device_id", "bad device id in topic %r" % t[:80])
    kind = "/".join(parts[2:])
    if kind not in _SCHEMAS:
        raise ProtocolError("unknown_topic", "unknown message kind %r" % kind[:40])
    return parts[1], kind


def _type_ok(v, code):
    if code == "a":
        return True
    if code == "b":
        return isinstance(v, bool)
    if isinstance(v, bool):
        return False
    if code == "s":
        return isinstance(v, str)
    if code == "i":
        return isinstance(v, int)
    if code == "n":
        return (isinstance(v, int) or isinstance(v, float)) and v == v and -1e300 < v < 1e300
    if code == "d":
        return isinstance(v, dict)
    if code == "l":
        return isinstance(v, list)
    return False


_TYPE_NAMES = {"s": "string", "i": "integer", "n": "number", "b": "boolean", "d": "object", "l": "array"}


def validate(kind, msg):
    """Check a decoded message against its schema; unknown fields are kept
    (forward compatibility). Raises ProtocolError."""
    deep, odd, nonfinite = scan(msg)
    if deep:
        raise nesting_error()
    return check(kind, msg, odd, nonfinite)


def check(kind, msg, odd=False, nonfinite=False):
    """validate() of a message already scanned (scan()): not nested too deep,
    holding a value JSON lacks if odd, NaN or an infinity if nonfinite."""
    if not isinstance(msg, dict):
        raise ProtocolError("not_object", "%s message is not a JSON object" % kind)
    v = msg.get("v")
    if v is None:
        raise ProtocolError("missing_field", "%s message lacks 'v'" % kind)
    if not _type_ok(v, "i"):
        raise ProtocolError("bad_type", "%s.v must be a integer" % kind)
    if v != VERSION:
        raise ProtocolError("unsupported_version", "protocol version %r is not %d" % (v, VERSION))
    for name, code, required in _SCHEMAS[kind]:
        if name not in msg:
            if required:
                raise ProtocolError("missing_field", "%s message lacks %r" % (kind, name))
            continue
        if not _type_ok(msg[name], code):
            raise ProtocolError("bad_type", "%s.%s must be a %s" % (kind, name, _TYPE_NAMES[code]))
    # dev and id are reserved in every kind, declared there or not
    if "dev" in msg and not valid_id(msg["dev"]):
        raise ProtocolError("bad_device_id", "bad device id %s" % shown(msg["dev"]))
    if "id" in msg and not (isinstance(msg["id"], str) and 0 < len(msg["id"]) <= MAX_ID):
        raise ProtocolError("bad_value", "command id must be a string of 1-%d characters" % MAX_ID)
    if kind == "state" and msg["state"] not in STATES:
        raise ProtocolError("bad_value", "state must be one of " + ", ".join(STATES))
    for name, code, _ in _SCHEMAS[kind]:
        if (code == "i" or code == "n") and name in msg:
            lo, hi = bounds(name)
            if not lo <= msg[name] <= hi:
                raise ProtocolError("bad_value", "%s.%s must be within %d..%d" % (kind, name, lo, hi))
    if kind == "hello":
        _check_hello(msg)
    # after the fields, so that a number field holding one is a bad_type
    if odd:
        raise ProtocolError("bad_type", "%s message holds a value that JSON cannot carry" % kind)
    if nonfinite:
        raise ProtocolError("bad_value", "%s message holds NaN or an infinity" % kind)
    return msg


def _check_fields(what, obj, fields):
    if not isinstance(obj, dict):
        raise ProtocolError("bad_type", "%s must be an object" % what)
    for name, code in fields:
        if name in obj and not _type_ok(obj[name], code):
            raise ProtocolError("bad_type", "%s.%s must be a %s" % (what, name, _TYPE_NAMES[code]))


def _check_hello(msg):
    """What the gateway stores of a hello and lists for the fleet: each
    feature an object, the capabilities strings, ota's counter in range."""
    for name, f in msg["features"].items():
        _check_fields("hello.features[%r]" % name[:32], f, _FEATURE)
    for key in ("caps", "addons"):
        for c in msg.get(key, ()):
            if not isinstance(c, str):
                raise ProtocolError("bad_type", "hello.%s must hold strings" % key)
    for name, f in msg["features"].items():
        for c in f.get("waiting", ()):
            if not isinstance(c, str):
                raise ProtocolError("bad_type", "hello.features[%r].waiting must hold strings" % name[:32])
    for path, choice in msg.get("streams", {}).items():
        if choice not in ("local", "off"):
            raise ProtocolError("bad_value", "hello.streams[%r] must be local or off" % path[:64])
    if "platform" in msg and not isinstance(msg["platform"], str):
        raise ProtocolError("bad_type", "hello.platform must be a string")
    if "ota" in msg:
        ota = msg["ota"]
        _check_fields("hello.ota", ota, _OTA)
        for k in ("manifest", "image"):
            if k in ota and not (ota[k] is None or isinstance(ota[k], str)):
                raise ProtocolError("bad_type", "hello.ota.%s must be a string or null" % k)
        for k in ("counter", "root"):
            if k in ota and not 0 <= ota[k] <= MAX_INT:
                raise ProtocolError("bad_value", "hello.ota.%s must be within 0..%d" % (k, MAX_INT))
    if msg.get("proto", 1) < PROTOCOLS[0]:
        raise ProtocolError(
            "unsupported_protocol",
            "protocol level %d is not served; this gateway serves %d to %d"
            % (msg["proto"], PROTOCOLS[0], PROTOCOLS[-1]),
        )


def decode(kind, payload):
    """The validated message of a given kind from raw payload bytes.
    Raises ProtocolError: too_large, bad_json, not_object, missing_field,
    bad_type, bad_value, unsupported_version, bad_device_id."""
    return validate(kind, loads(payload))


def encode(kind, msg):
    """Compact JSON bytes of a message, validated the same way as decode."""
    validate(kind, msg)
    return dumps(kind, msg)
