# Add-on modules plugged in or out (docs/protocol.md 13): the board's scan
# (Hal.scan) found another set than the HAL holds. Their capabilities join
# the board's; while the device runs, a feature whose hardware went is
# stopped cleanly and waits, one waiting whose hardware came starts, and the
# device says so. Loaded only when that happens (at boot with add-ons
# plugged in, or when they change), let go after.


def plug(hal, found):
    """The HAL's capabilities with the add-ons `found` (names): True, or
    False when the board file cannot be read now (the next look tries again)."""
    found = tuple(sorted(n for n in found if n in hal.addons))
    caps = dict(hal.board.get("capabilities", {}))
    if found:
        specs = hal.specs
        if specs is None:
            import json

            from .store import read_bytes

            try:
                specs = json.loads(read_bytes(hal.path))["addons"]
            except (OSError, ValueError, KeyError, TypeError):
                return False
        found = tuple(n for n in found if n in specs)
        for n in found:
            caps[n] = specs[n]
    hal.caps = caps
    hal.plugged = found
    return True


def changed(d, found):
    """The scan found `found` (names) while the device runs."""
    hal = d.hal
    before, caps = hal.plugged, hal.caps
    if not plug(hal, found) or hal.plugged == before:
        return
    f = d.features
    now = hal.plugged
    for name in now:
        if name not in before:
            d.emit_event("addon", None, "plugged in: %s" % _part(hal.caps, name))
    for name in before:
        if name not in now:
            d.emit_event("addon", None, "unplugged: %s" % _part(caps, name))
            f.readings.pop(name, None)
            d.actuators.pop(name, None)
    for name in sorted(f.running):
        missing = f.missing(name)
        if missing:
            f.stop(name)
            f.waiting[name] = missing
            d.emit_event("feature_waiting", name, "stopped: the board lacks %s now" % ", ".join(missing))
    for name in sorted(f.waiting):
        s = f.settings.get(name, {})
        if f.missing(name) or not s.get("enabled", True) or s.get("error"):
            continue
        if f.start(name):
            d.emit_event("feature_started", name, "its hardware is there: %s" % ", ".join(_required(f, name)))
    d.republish_hello()


def _part(caps, name):
    return "%s (%s)" % (caps[name].get("part", name), name)


def _required(f, name):
    return f.manifests[name].get("requires", [])
