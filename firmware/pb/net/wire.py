# The protocol's core, lean enough for the device (docs/protocol.md): names,
# limits, and JSON out with the checks every message gets. What comes in (the
# gateway's commands) is in pb/net/wire_in.py, loaded only for a command; pb/peer/protocol.py
# builds the gateway's full schema validation on both.
import json

from ..compat import MICROPYTHON, const
from ..errors import ProtocolError
from ..ids import MAX_ID, valid_id
from .mqtt import valid_utf8

VERSION = const(1)
ROOT = "pb"
MAX_MESSAGE = const(4096)  # bytes of one JSON control message
MAX_DEPTH = const(16)  # nested objects and arrays in a message, itself included
# The largest packet taken: a 4 KB update chunk or command, and its header
MAX_PACKET = const(4224)

__all__ = ["MAX_ID", "valid_id"]


def topic(dev, kind):
    return ROOT + "/" + dev + "/" + kind


def state(dev, state, ts=None, reason=None):
    """A state message (docs/protocol.md 3.2): online, or offline and why
    (the last will says "lost")."""
    msg = {"v": VERSION, "dev": dev, "state": state}
    if reason is not None:
        msg["reason"] = reason
    if ts is not None:
        msg["ts"] = ts
    return msg


_INF = float("inf")


def scan(msg):
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


def nesting_error():
    return ProtocolError("too_large", "message nested deeper than %d levels" % MAX_DEPTH)


def dumps(kind, msg):
    """Compact JSON bytes of a message (any kind), refusing what JSON cannot
    carry. Raises ProtocolError: too_large, bad_type, bad_value."""
    deep, odd, nonfinite = scan(msg)
    if deep:
        raise nesting_error()
    if odd:
        raise ProtocolError("bad_type", "%s message holds a value that JSON cannot carry" % kind)
    if nonfinite:
        raise ProtocolError("bad_value", "%s message holds NaN or an infinity" % kind)
    if MICROPYTHON:
        text = json.dumps(msg, separators=(",", ":"))
    else:
        # raw UTF-8, as MicroPython writes it: its json does not join an
        # escaped surrogate pair ("\\ud83d\\ude00") back into one character
        text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False)  # type: ignore[call-overload]
    try:
        data = text.encode("utf-8")
        if len(data) != len(text) and not valid_utf8(data):
            raise UnicodeError("lone surrogate")  # MicroPython encodes one without complaint
    except UnicodeError:
        raise ProtocolError("bad_value", "%s message holds a lone surrogate" % kind) from None
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("too_large", "%s message of %d bytes" % (kind, len(data)))
    return data
