# The protocol's core, lean enough for the device (docs/protocol.md): names,
# limits, JSON in and out with the checks every message gets, commands.
# pb/proto.py builds the gateway's full schema validation on top of it; the
# device loads only this.
import json

from .compat import MICROPYTHON, const
from .errors import ProtocolError
from .mqtt import decode_utf8, valid_utf8

VERSION = const(1)
ROOT = "pb"
MAX_MESSAGE = const(4096)  # bytes of one JSON control message
MAX_ID = const(32)  # characters of a device id or command id
MAX_DEPTH = const(16)  # nested objects and arrays in a message, itself included

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


def _no_constant(name):
    raise ValueError("%s is not JSON" % name)


def loads(payload):
    """A JSON value from payload bytes, with the checks every message gets:
    size, UTF-8, JSON (no NaN literals), nesting. Raises ProtocolError:
    too_large, bad_json."""
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
    if _scan(msg)[0]:
        raise _nesting_error()
    return msg


def dumps(kind, msg):
    """Compact JSON bytes of a message (any kind), refusing what JSON cannot
    carry. Raises ProtocolError: too_large, bad_type, bad_value."""
    deep, odd, nonfinite = _scan(msg)
    if deep:
        raise _nesting_error()
    if odd:
        raise ProtocolError("bad_type", "%s message holds a value that JSON cannot carry" % kind)
    if nonfinite:
        raise ProtocolError("bad_value", "%s message holds NaN or an infinity" % kind)
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


def decode_cmd(payload):
    """A command from the gateway, checked (the device's one incoming kind).
    Raises ProtocolError."""
    msg = loads(payload)
    if not isinstance(msg, dict):
        raise ProtocolError("not_object", "cmd message is not a JSON object")
    v = msg.get("v")
    if v is None:
        raise ProtocolError("missing_field", "cmd message lacks 'v'")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError("bad_type", "cmd.v must be a integer")
    if v != VERSION:
        raise ProtocolError("unsupported_version", "protocol version %r is not %d" % (v, VERSION))
    for name in ("id", "op"):
        if name not in msg:
            raise ProtocolError("missing_field", "cmd message lacks %r" % name)
        if not isinstance(msg[name], str):
            raise ProtocolError("bad_type", "cmd.%s must be a string" % name)
    if "args" in msg and not isinstance(msg["args"], dict):
        raise ProtocolError("bad_type", "cmd.args must be a object")
    if "dev" in msg and not valid_id(msg["dev"]):
        raise ProtocolError("bad_device_id", "bad device id %s" % _shown(msg["dev"]))
    if not 0 < len(msg["id"]) <= MAX_ID:
        raise ProtocolError("bad_value", "command id must be a string of 1-%d characters" % MAX_ID)
    if _scan(msg)[2]:
        raise ProtocolError("bad_value", "cmd message holds NaN or an infinity")
    return msg


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
