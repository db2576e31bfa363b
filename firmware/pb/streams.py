# The owner's data choices (docs/protocol.md 12): each value the device can
# send is a stream, its owner's choice `share` (published), `local` (used
# on the device, never published) or `off` (not read at all: a sensor only;
# a feature's field is then not kept either). Loaded at boot and for the
# streams commands, let go after: the runtime keeps only plain data of
# what is withheld (Device.hide), filtered by its own few lines.
#
# The record `streams` on flash holds a choice for every stream the device
# knew when it was written, so that a stream an update brings starts
# `local`: nobody chose to share it. A device without the record (none was
# provisioned) shares every stream, as before choices existed.
from .errors import ConfigError

CHOICES = ("share", "local", "off")
RECORD = "streams"
# The runtime's own messages: needed to operate, never withheld
NEEDED = ("state", "hello", "ota", "events", "replies")


def known(d):
    """Every stream of the device: path -> whether it can be `off` (a
    sensor, which the runtime reads) or only `local`; its add-ons' too."""
    out = {}
    for name in d.hal.sensors():
        out["sensors." + name] = True
    for name in d.hal.actuators():
        out["actuators." + name] = False
    for name in d.hal.addons:  # (plugged in or not: the owner's choice outlives unplugging)
        sensor = d.hal.addons[name][0]
        out[("sensors." if sensor else "actuators.") + name] = sensor
    f = d.features
    for name in f.manifests:
        for field in f.manifests[name].get("permissions", {}).get("publishes", ()):
            out["features." + name + "." + field] = True
    return out


def load(d):
    """At boot: the choices as recorded, a new stream `local`; the record
    kept again when streams came or went. Applies them."""
    rec = d.store.load(RECORD, None)
    if not isinstance(rec, dict) or not isinstance(rec.get("choices"), dict):
        apply(d, {})
        return
    old = rec["choices"]
    streams = known(d)
    choices = {}
    for path in streams:
        c = old.get(path)
        choices[path] = c if c in CHOICES and (c != "off" or streams[path]) else "local"
    if choices != old:
        d.store.save(RECORD, {"choices": choices})
    apply(d, choices)


def current(d):
    """Every stream's choice now (a device without the record: all shared)."""
    withheld = d.hide[0] if d.hide is not None else {}
    return {p: withheld.get(p, "share") for p in sorted(known(d))}


def choose(d, asked):
    """Set the owner's choices (path -> choice); every path checked first,
    nothing applied unless all are good. Returns every stream's choice."""
    if not isinstance(asked, dict) or not asked:
        raise ConfigError("streams must be a non-empty object of stream: share|local|off")
    streams = known(d)
    for path in asked:
        c = asked[path]
        if path in NEEDED:
            raise ConfigError("%s is needed to operate the device; it is always shared" % path)
        if path not in streams:
            raise ConfigError("no stream %r (streams: %s)" % (path, ", ".join(sorted(streams))))
        if c not in CHOICES:
            raise ConfigError("%s: choice %r is not one of share, local, off" % (path, c))
        if c == "off" and not streams[path]:
            raise ConfigError("%s cannot be off: the device drives it; local keeps it on the device" % path)
    choices = current(d)
    choices.update(asked)
    d.store.save(RECORD, {"choices": choices})
    apply(d, choices)
    for path in asked:
        if asked[path] == "off" and path.startswith("sensors."):
            d.features.readings.pop(path[8:], None)
    return choices


def apply(d, choices):
    """What the runtime withholds, as Device.hide: (withheld, sensors,
    sensors off, actuators, {feature: fields}, {feature: fields off}), or
    None when every stream is shared."""
    withheld = {}
    sensors, off, actuators = set(), set(), set()
    fields = {}  # type: dict[str, set[str]]
    drop = {}  # type: dict[str, set[str]]
    for path in choices:
        c = choices[path]
        if c == "share":
            continue
        withheld[path] = c
        kind, rest = path.split(".", 1)
        if kind == "sensors":
            sensors.add(rest)
            if c == "off":
                off.add(rest)
        elif kind == "actuators":
            actuators.add(rest)
        else:
            name, field = rest.split(".", 1)
            fields.setdefault(name, set()).add(field)
            if c == "off":
                drop.setdefault(name, set()).add(field)
    d.hide = (withheld, sensors, off, actuators, fields, drop) if withheld else None
    for name in drop:
        report = d.features.reports.get(name)
        if report:
            for field in drop[name]:
                report.pop(field, None)
