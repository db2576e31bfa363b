# Commands from the gateway (docs/protocol.md, "Commands"): decoded,
# deduplicated, carried out, answered. Loaded at the first command: a device
# that is never told anything does not spend the RAM.
import json

from .compat import asyncio, collect, const, mem_free, ticks_diff, ticks_ms
from .errors import ConfigError, FeatureError, HalError, ProtocolError, StoreError
from .ids import valid_id
from .net import wire, wire_in

_RECENT_CMDS = const(8)


def handle(dev, payload):
    """A cmd message: answer it, once per command id."""
    cmd_id = None
    try:
        msg = wire_in.decode_cmd(payload)
        cmd_id = msg["id"]
    except ProtocolError as exc:
        try:
            raw = json.loads(bytes(payload))
            cmd_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        except ValueError:
            pass
        if cmd_id and valid_id(cmd_id):
            _reply(dev, cmd_id, wire_in.reply_error(dev.id, cmd_id, exc.code, exc.message))
        else:
            dev.emit_event("bad_command", None, exc.message)
        return
    for seen, data in dev.recent:
        if seen == cmd_id:
            # a QoS 1 duplicate: answer again, do not act twice
            dev.client.publish(dev.topic("reply"), data, 1, False)
            return
    _reply(dev, cmd_id, execute(dev, msg["op"], msg.get("args", {}), cmd_id))


def _reply(dev, cmd_id, reply):
    try:
        data = wire.dumps("reply", reply)
    except ProtocolError as exc:
        data = wire.dumps("reply", wire_in.reply_error(dev.id, cmd_id, exc.code, exc.message))
    except MemoryError:
        # no block for the reply's text: a short no_ram in its place, on a
        # collected heap, less the replies kept for repeats (what the command
        # set, a retry sets again)
        reply = None
        dev.recent.clear()
        collect()
        try:
            data = wire.dumps(
                "reply", wire_in.reply_error(dev.id, cmd_id, "no_ram", "not enough RAM for the reply now")
            )
        except MemoryError:
            # not even that: unanswered (the gateway's wait for it ends), but
            # the device goes on rather than restart and lose its state
            dev.log("no RAM to answer a command")
            return
    dev.recent.append((cmd_id, data))
    if len(dev.recent) > _RECENT_CMDS:
        dev.recent.pop(0)
    dev.client.publish(dev.topic("reply"), data, 1, False)


def execute(dev, op, args, cmd_id="local"):
    """Carry out one command; returns the reply message. A heap with no
    block for the command's code (a settings module loaded on demand beside
    a TLS session) is answered no_ram, and the device goes on."""
    try:
        result = _op(dev, op, args)
    except MemoryError:
        collect()
        return wire_in.reply_error(dev.id, cmd_id, "no_ram", "not enough RAM for %s now" % op)
    except (ConfigError, FeatureError, BadArgs, StoreError, HalError) as exc:
        # (one clause: less code, and at 128 KB with TLS a status reply is
        # made only with each byte of it spared)
        if isinstance(exc, BadArgs):
            code = exc.code
        elif isinstance(exc, ConfigError):
            code = "bad_config"
        elif isinstance(exc, FeatureError):
            code = "feature_failed"
        else:
            code = "storage" if isinstance(exc, StoreError) else "hardware"
        return wire_in.reply_error(dev.id, cmd_id, code, str(exc))
    return wire_in.reply_ok(dev.id, cmd_id, result)


def _op(dev, op, args):
    f = dev.features
    if op == "ping":
        return {"uptime_s": ticks_diff(ticks_ms(), dev.started) // 1000, "heap_free": mem_free()}
    if op == "status":
        sensors, actuators, _ = dev.shared()
        return {
            "features": f.status(),
            "config": {n: f.config(n) for n in sorted(f.manifests)},
            "sensors": sensors,
            "actuators": actuators,
            "mqtt": dev.client.stats,
            "heap_free": mem_free(),
            "boot_count": dev.state.get("boot_count", 0),
            "ota": dev.updates.info(),
        }
    if op == "config.get":
        name = args.get("feature")
        if name is None:
            return {n: f.config(n) for n in sorted(f.manifests)}
        return {name: f.config(_feature_arg(f, args))}
    if op == "config.set":
        name = _feature_arg(f, args)
        return {name: f.set_config(name, args.get("values"))}
    if op == "feature.enable" or op == "feature.disable":
        name = _feature_arg(f, args)
        f.enable(name, op == "feature.enable")
        dev.republish_hello()
        return {name: f.status()[name]}
    if op == "data.set":
        key = args.get("key")
        if not isinstance(key, str) or not key:
            raise BadArgs("data.set needs a string 'key'")
        f.set_data(key, args.get("value"))
        return {"key": key}
    if op == "streams.get":
        from .streams import NEEDED, current

        return {"streams": current(dev), "needed": list(NEEDED)}
    if op == "streams.set":
        from .streams import choose

        out = {"streams": choose(dev, args.get("streams"))}
        dev.republish_hello()
        return out
    if op == "reboot":
        asyncio.create_task(dev.reboot_soon())
        return {"rebooting": True}
    if op == "repl.open":
        from .repl import open_repl

        result = open_repl(dev)
        if result is None:
            raise BadArgs("an update's trial is under way", "busy")
        return result
    raise BadArgs("unknown op %r (known: %s)" % (op, ", ".join(wire_in.OPS)), "unknown_op")


class BadArgs(Exception):
    def __init__(self, message, code="bad_args"):
        super().__init__(message)
        self.code = code


def _feature_arg(f, args):
    name = args.get("feature")
    if not isinstance(name, str):
        raise BadArgs("needs a string 'feature'")
    if name not in f.manifests:
        raise BadArgs(
            "no feature %r (installed: %s)" % (name, ", ".join(sorted(f.manifests)) or "none"),
            "unknown_feature",
        )
    return name
