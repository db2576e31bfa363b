# The permabeta device protocol, sans-I/O: topic names and the JSON control
# messages, their limits and their validation. docs/protocol.md is the spec;
# the gateway imports this same module, so both ends agree by construction.
import json

from .compat import const
from .errors import ProtocolError

VERSION = const(1)
ROOT = "pb"
MAX_MESSAGE = const(4096)  # bytes of one JSON control message
MAX_ID = const(32)  # characters of a device id or command id

# Message kinds by direction.
UP = ("hello", "state", "telemetry", "reply", "event")  # device -> gateway
DOWN = ("cmd",)  # gateway -> device

# Field types: s str, i int, n number, b bool, d object, l array, a anything.
_SCHEMAS = {
    "hello": (
        ("v", "i", 1),
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
OPS = (
    "ping",
    "status",
    "config.get",
    "config.set",
    "feature.enable",
    "feature.disable",
    "data.set",
    "reboot",
)


def _is_id_char(c):
    return ("a" <= c <= "z") or ("0" <= c <= "9") or c == "-" or c == "_"


def valid_id(s):
    """True for 1-32 characters of a-z, 0-9, '-' and '_', starting with a
    letter or digit: safe in a topic level, a file name and a URL."""
    if not isinstance(s, str) or not 0 < len(s) <= MAX_ID:
        return False
    if s[0] == "-" or s[0] == "_":
        return False
    for c in s:
        if not _is_id_char(c):
            return False
    return True


def topic(dev, kind):
    return ROOT + "/" + dev + "/" + kind


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
    if not isinstance(msg, dict):
        raise ProtocolError("not_object", "%s message is not a JSON object" % kind)
    v = msg.get("v")
    if not _type_ok(v, "i"):
        raise ProtocolError("missing_field", "%s message has no integer 'v'" % kind)
    if v != VERSION:
        raise ProtocolError("unsupported_version", "protocol version %r is not %d" % (v, VERSION))
    for name, code, required in _SCHEMAS[kind]:
        if name not in msg:
            if required:
                raise ProtocolError("missing_field", "%s message lacks %r" % (kind, name))
            continue
        if not _type_ok(msg[name], code):
            raise ProtocolError("bad_type", "%s.%s must be a %s" % (kind, name, _TYPE_NAMES[code]))
    if "dev" in msg and not valid_id(msg["dev"]):
        raise ProtocolError("bad_device_id", "bad device id %r" % msg["dev"][:40])
    if "id" in msg and not 0 < len(msg["id"]) <= MAX_ID:
        raise ProtocolError("bad_value", "command id must be 1-%d characters" % MAX_ID)
    if kind == "state" and msg["state"] not in STATES:
        raise ProtocolError("bad_value", "state must be one of " + ", ".join(STATES))
    return msg


def decode(kind, payload):
    """The validated message of a given kind from raw payload bytes.
    Raises ProtocolError: too_large, bad_json, not_object, missing_field,
    bad_type, bad_value, unsupported_version, bad_device_id."""
    if len(payload) > MAX_MESSAGE:
        raise ProtocolError("too_large", "%d bytes exceeds %d" % (len(payload), MAX_MESSAGE))
    try:
        text = bytes(payload).decode("utf-8")
        msg = json.loads(text)
    except (ValueError, UnicodeError) as exc:
        raise ProtocolError("bad_json", "not JSON: %s" % exc) from None
    return validate(kind, msg)


def encode(kind, msg):
    """Compact JSON bytes of a message, validated the same way as decode."""
    validate(kind, msg)
    data = json.dumps(msg, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("too_large", "%s message of %d bytes" % (kind, len(data)))
    return data


def reply_ok(dev, cmd_id, result=None):
    msg = {"v": VERSION, "dev": dev, "id": cmd_id, "ok": True}
    if result is not None:
        msg["result"] = result
    return msg


def reply_error(dev, cmd_id, code, message):
    return {
        "v": VERSION,
        "dev": dev,
        "id": cmd_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }
