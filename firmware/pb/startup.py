# The runtime's start, once per boot (pb/runtime.py Device.boot): the boot
# counted, the reset cause learnt, the features started, the subscriptions
# made. Let go after, so that its code takes no RAM while the device runs.
from .compat import forget, format_exception, mem_free

# What the features' discovery loads, let go once they run
# (tests/firmware/test_module_lists.py checks these names)
DISCOVERY_MODULES = ("pb.manifest", "pb.values", "pb.streams")


def boot(d):
    """Count the boot, learn why we reset, start the features, subscribe."""
    try:
        d.state = d.store.load("state", {}) or {}
    except Exception as exc:  # noqa: BLE001 - a corrupt record must not brick the device
        d.log("state record unreadable, starting afresh: " + format_exception(exc))
        d.state = {}
    d.reset_cause = d.state.pop("reset_request", None) or d.hal.reset_cause()
    d.state["boot_count"] = d.state.get("boot_count", 0) + 1
    d.keep_state()
    d.hal.safe_state()
    _addons(d)
    d.features.discover()
    _streams(d)
    d.features.start_all()
    forget(DISCOVERY_MODULES)
    for name, s in d.features.settings.items():
        if s.get("error"):
            d.log("feature %s disabled: %s" % (name, s["error"]))
    for name in d.features.waiting:
        d.log("feature %s waits for %s" % (name, ", ".join(d.features.waiting[name])))
    d.log(
        "booted (%s, boot %d, features %s, heap free %d)"
        % (
            d.reset_cause,
            d.state["boot_count"],
            ",".join(sorted(d.features.running)) or "-",
            mem_free(),
        )
    )
    d.client.subscribe(d.topic("cmd"), 1)
    d.client.subscribe(d.topic("ota/offer"), 1)
    d.client.subscribe(d.topic("ota/chunk"), 0)
    d.client.subscribe(d.topic("ota/root"), 1)
    d.client.subscribe(d.topic("ota/time"), 1)


def _addons(d):
    """The add-ons plugged in (docs/protocol.md 13): features need them."""
    found = d.hal.scan() if d.hal.addons else None
    if found is not None and tuple(sorted(found)) != d.hal.plugged:
        from .addons import plug

        plug(d.hal, found)
        forget(("pb.addons",))


def _streams(d):
    """The owner's data choices (pb/streams.py). A record that cannot be
    read withholds every stream: nothing leaves that may not."""
    from . import streams

    try:
        streams.load(d)
    except Exception as exc:  # noqa: BLE001 - a corrupt record must not brick the device
        d.log("streams record unreadable, keeping every stream local: " + format_exception(exc))
        streams.apply(d, {p: "local" for p in streams.known(d)})
