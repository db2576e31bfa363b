# The incoming side of the protocol core: JSON in with the checks every
# message gets, the gateway's commands, and the replies to them. The device
# loads it for a command and lets it go after; pb/peer/protocol.py builds on it.
import json

from ..compat import MICROPYTHON
from ..errors import ProtocolError
from ..ids import MAX_ID, valid_id
from .mqtt import decode_utf8
from .wire import MAX_MESSAGE, VERSION, nesting_error, scan

OPS = (
    "ping",
    "status",
    "config.get",
    "config.set",
    "feature.enable",
    "feature.disable",
    "data.set",
    "streams.get",
    "streams.set",
    "reboot",
    "repl.open",
)


def shown(v):
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
            msg = json.loads(text, parse_constant=_no_constant)  # type: ignore[call-arg]
    except (ValueError, UnicodeError) as exc:
        raise ProtocolError("bad_json", "not JSON: %s" % exc) from None
    except RuntimeError:  # CPython's RecursionError; MicroPython's json does not recurse
        raise nesting_error() from None
    if scan(msg)[0]:
        raise nesting_error()
    return msg


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
        raise ProtocolError("bad_device_id", "bad device id %s" % shown(msg["dev"]))
    if not 0 < len(msg["id"]) <= MAX_ID:
        raise ProtocolError("bad_value", "command id must be a string of 1-%d characters" % MAX_ID)
    if scan(msg)[2]:
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
