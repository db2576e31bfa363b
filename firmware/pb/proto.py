# The permabeta device protocol, sans-I/O: topic names and the JSON control
# messages, their limits and their validation. docs/protocol.md is the spec;
# the gateway imports this same module, so both ends agree by construction.
import json

from .compat import MICROPYTHON, const
from .errors import ProtocolError
from .mqtt import decode_utf8, valid_utf8

VERSION = const(1)
ROOT = "pb"
MAX_MESSAGE = const(4096)  # bytes of one JSON control message
MAX_ID = const(32)  # characters of a device id or command id
MAX_DEPTH = const(16)  # nested objects and arrays in a message, itself included

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
_INF = float("inf")


def _scan(msg):
    """(deep, odd, nonfinite) of msg: nested deeper than MAX_DEPTH (CPython's
    json recurses), holding a value of a type JSON lacks, holding NaN or an
    infinity (not JSON: CPython writes NaN, MicroPython nan). Walks without
    recursion, so the answer does not depend on the order of the dicts."""
    deep = odd = nonfinite = False
    stack = [(msg, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict) or isinstance(v, list) or isinstance(v, tuple):
            if depth > MAX_DEPTH:
                deep = True
                continue
            for x in v.values() if isinstance(v, dict) else v:
                stack.append((x, depth + 1))
        elif isinstance(v, float):
            if v != v or v == _INF or v == -_INF:
                nonfinite = True
        elif not (v is None or isinstance(v, bool) or isinstance(v, int) or isinstance(v, str)):
            odd = True
    return deep, odd, nonfinite


def _nesting_error():
    return ProtocolError("too_large", "message nested deeper than %d levels" % MAX_DEPTH)


def _shown(v):
    return repr(v[:40]) if isinstance(v, str) else "of type " + type(v).__name__


def validate(kind, msg):
    """Check a decoded message against its schema; unknown fields are kept
    (forward compatibility). Raises ProtocolError."""
    deep, odd, nonfinite = _scan(msg)
    if deep:
        raise _nesting_error()
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
    # dev and id are reserved in every kind, declared there or not
    if "dev" in msg and not valid_id(msg["dev"]):
        raise ProtocolError("bad_device_id", "bad device id %s" % _shown(msg["dev"]))
    if "id" in msg and not (isinstance(msg["id"], str) and 0 < len(msg["id"]) <= MAX_ID):
        raise ProtocolError("bad_value", "command id must be a string of 1-%d characters" % MAX_ID)
    if kind == "state" and msg["state"] not in STATES:
        raise ProtocolError("bad_value", "state must be one of " + ", ".join(STATES))
    # after the fields, so that a number field holding one is a bad_type
    if odd:
        raise ProtocolError("bad_type", "%s message holds a value that JSON cannot carry" % kind)
    if nonfinite:
        raise ProtocolError("bad_value", "%s message holds NaN or an infinity" % kind)
    return msg


def _no_constant(name):
    raise ValueError("%s is not JSON" % name)


def decode(kind, payload):
    """The validated message of a given kind from raw payload bytes.
    Raises ProtocolError: too_large, bad_json, not_object, missing_field,
    bad_type, bad_value, unsupported_version, bad_device_id."""
    if len(payload) > MAX_MESSAGE:
        raise ProtocolError("too_large", "%d bytes exceeds %d" % (len(payload), MAX_MESSAGE))
    try:
        text = decode_utf8(payload)
        if MICROPYTHON:
            msg = json.loads(text)  # takes no NaN or Infinity, and no keywords
        else:
            msg = json.loads(text, parse_constant=_no_constant)
    except (ValueError, UnicodeError) as exc:
        raise ProtocolError("bad_json", "not JSON: %s" % exc) from None
    except RuntimeError:  # CPython's RecursionError; MicroPython's json does not recurse
        raise _nesting_error() from None
    return validate(kind, msg)


def encode(kind, msg):
    """Compact JSON bytes of a message, validated the same way as decode."""
    validate(kind, msg)
    if MICROPYTHON:
        text = json.dumps(msg, separators=(",", ":"))
    else:
        # raw UTF-8, as MicroPython writes it: its json does not join an
        # escaped surrogate pair ("\\ud83d\\ude00") back into one character
        text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
    try:
        data = text.encode("utf-8")
        if len(data) != len(text) and not valid_utf8(data):
            raise UnicodeError("lone surrogate")  # MicroPython encodes one without complaint
    except UnicodeError:
        raise ProtocolError("bad_value", "%s message holds a lone surrogate" % kind) from None
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
