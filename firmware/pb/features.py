# Feature packages: manifests checked at load time, each feature started in
# its own context, and a feature that raises is stopped, disabled and
# reported while the device keeps running.
#
# A feature is a folder <root>/<name>/ with manifest.json and an __init__
# module defining start(ctx) -> object. The object may define
# on_config(key, value), selftest() and stop(). Features never touch the
# network or the hardware directly: they go through their context.
import sys

from . import API
from .compat import const, format_exception
from .errors import ConfigError, FeatureError, HalError, StoreError

MAX_FEATURES = 16
MAX_DATA = 2048  # bytes of JSON the gateway's data.set may keep on a device
_MAX_ERROR = const(120)  # characters of an error kept in status and hello


def import_feature(root, name):
    """The feature's module, imported as <package>.<name>, where root's last
    path component is the package and its parent goes on sys.path."""
    i = root.rfind("/")
    parent, pkg = (root[:i], root[i + 1 :]) if i >= 0 else ("", root)
    if parent and parent not in sys.path:
        sys.path.insert(0, parent)
    top = __import__(pkg + "." + name)
    return getattr(top, name)


_KEEP = ("version", "api", "requires", "permissions", "busy")
_KEEP_SPEC = ("type", "default", "min", "max", "enum", "max_len")


def _lean(m):
    """What the runtime needs of a manifest (descriptions and docs stay on flash)."""
    out = {}
    for k in _KEEP:
        if k in m:
            out[k] = m[k]
    config = m.get("config", {})
    out["config"] = {}
    for key in config:
        out["config"][key] = {k: config[key][k] for k in _KEEP_SPEC if k in config[key]}
    return out


class Context:
    """What a feature may do: subscribe to events, read the sensors it
    declared, drive the actuators it declared, report the telemetry fields
    it declared. Anything else raises FeatureError."""

    def __init__(self, host, name, manifest, config):
        self._host = host
        self.name = name
        self.version = manifest["version"]
        self.config = config
        perms = manifest.get("permissions", {})
        self._reads = perms.get("reads", [])
        self._drives = perms.get("drives", [])
        self._publishes = perms.get("publishes", [])

    def on(self, event, handler):
        """Call handler on an event: 'sensor.<name>' (value), 'tick' (now),
        'data.<key>' (value the gateway sent), 'signal.<name>' (value another
        feature of this device signalled)."""
        if event.startswith("sensor."):
            self._need(event[7:], self._reads, "read")
        elif event != "tick" and not event.startswith("data.") and not event.startswith("signal."):
            raise FeatureError("unknown event %r" % event)
        self._host.bus.on(event, handler, self.name)

    def signal(self, name, value):
        """Tell the other features of this device something ('signal.<name>').
        Signals stay on the device: nothing leaves it without a report."""
        self._host.bus.emit("signal." + name, value)

    def read(self, sensor):
        """Latest reading of a declared sensor, or None before the first."""
        self._need(sensor, self._reads, "read")
        return self._host.readings.get(sensor)

    def drive(self, actuator, value):
        self._need(actuator, self._drives, "drive")
        self._host.drive(actuator, value)

    def report(self, fields):
        """Merge fields into this feature's telemetry."""
        for k in fields:
            if k not in self._publishes:
                raise FeatureError("%s may not publish %r (not in its permissions)" % (self.name, k))
        report = self._host.reports.setdefault(self.name, {})
        report.update(fields)
        hide = self._host.rt.hide
        if hide is not None and self.name in hide[5]:
            for k in hide[5][self.name]:  # turned off by the owner: not kept at all
                report.pop(k, None)

    def log(self, message):
        self._host.emit_event("log", self.name, str(message))

    def now(self):
        return self._host.now()

    def minute_of_day(self):
        """Local minutes since midnight (device setting utc_offset_min)."""
        t = int(self._host.now()) + 60 * self._host.utc_offset_min
        return (t // 60) % 1440

    def data(self, key):
        """The latest value the gateway sent for key (see 'data.<key>')."""
        return self._host.data.get(key)

    def _need(self, cap, allowed, verb):
        if cap not in allowed:
            raise FeatureError("%s may not %s %r (not in its permissions)" % (self.name, verb, cap))


class FeatureHost:
    """Starts, stops and isolates the features of one device.

    `runtime` supplies: bus, hal, now(), emit_event(kind, feature, message),
    utc_offset_min, and a Store. Persistent per-feature settings live in the
    store record 'features': {name: {enabled, error, config}}.
    """

    def __init__(self, runtime, store, root="features", importer=import_feature):
        self.rt = runtime
        self.bus = runtime.bus
        self.store = store
        self.root = root
        self.importer = importer
        self.readings = {}
        self.reports = {}
        self.manifests = {}
        self.running = {}  # name -> object returned by start(ctx)
        self.contexts = {}  # name -> its Context
        self.modules = {}  # name -> its imported module
        self.configs = {}  # name -> effective config
        self.broken = {}  # name -> why its package is unusable (this boot)
        self.waiting = {}  # name -> the capabilities it requires that the board lacks now
        self.set_id = "factory"  # which feature set runs: errors belong to it
        self.owners = {}  # actuator -> feature driving it
        self.settings = store.load("features", {}) or {}
        self.data = store.load("data", {}) or {}
        self.utc_offset_min = 0

    def now(self):
        return self.rt.now()

    def emit_event(self, kind, feature, message):
        self.rt.emit_event(kind, feature, message)

    def drive(self, actuator, value):
        self.rt.drive(actuator, value)

    # ---- lifecycle ---------------------------------------------------------

    def discover(self):
        """Read every manifest under root; bad ones are recorded as errors.
        No root: safe mode, no features at all."""
        if self.root is None:
            return
        from .manifest import list_features, read_manifest

        names = list_features(self.root)
        for i in range(len(names)):
            name = names[i]
            if i >= MAX_FEATURES:
                self.broken[name] = "more than %d features installed" % MAX_FEATURES
                continue
            try:
                self.manifests[name] = _lean(read_manifest(self.root, name))
            except Exception as exc:  # noqa: BLE001 - one bad package must not stop the boot
                self.broken[name] = format_exception(exc)
                self.manifests.pop(name, None)
                continue
            s = self.setting(name)
            if s.get("error") and s.get("error_set") != self.set_id:
                # it failed in another feature set: here it gets its own chance
                s["error"] = None

    def start_all(self):
        for name in sorted(self.manifests):
            s = self.setting(name)
            if s.get("enabled", True) and not s.get("error"):
                self.start(name)
        self._keep()

    def start(self, name):
        """Start one feature; False (and the error recorded) if it cannot.
        Its module may define check_config(cfg), raising ValueError for
        settings that are invalid together."""
        m = self.manifests.get(name)
        if m is None:
            raise FeatureError("no feature %r" % name)
        try:
            if m["api"] != API:
                raise FeatureError("needs runtime API %d, this runtime has %d" % (m["api"], API))
            missing = self.missing(name)
            if missing:
                # installed, not failed: it starts when its hardware is
                # plugged in (pb/addons.py)
                self.waiting[name] = missing
                return False
            self.waiting.pop(name, None)
            drives = m.get("permissions", {}).get("drives", [])
            for a in drives:
                other = self.owners.get(a)
                if other is not None and other != name:
                    raise FeatureError("%s is already driven by %s" % (a, other))
            ctx = Context(self, name, m, self.config(name))
            self.contexts[name] = ctx
            for a in drives:
                self.owners[a] = name
            mod = self.importer(self.root, name)
            self.modules[name] = mod
            obj = mod.start(ctx)
            self.running[name] = obj if obj is not None else mod
        except MemoryError as exc:
            # the device is short of RAM, not the feature at fault: reset,
            # saying where (a trial given up reports it: firmware/loader.py)
            step = "start" if name in self.modules else "import"
            raise MemoryError("%s, at %s of feature %s" % (exc, step, name))
        except Exception as exc:  # noqa: BLE001 - feature code: isolate and report
            self.fail(name, exc)
            return False
        self.setting(name)["error"] = None
        return True

    def missing(self, name):
        """What the feature requires that the board lacks now."""
        caps = self.rt.hal.caps
        return [c for c in self.manifests[name].get("requires", []) if c not in caps]

    def stop(self, name):
        obj = self.running.pop(name, None)
        self.contexts.pop(name, None)
        self.bus.drop(name)
        self.reports.pop(name, None)
        if obj is not None and hasattr(obj, "stop"):
            try:
                obj.stop()
            except Exception as exc:  # noqa: BLE001 - feature code
                self.emit_event("feature_error", name, "stop: " + format_exception(exc))
        for a in list(self.owners):
            if self.owners[a] == name:
                del self.owners[a]
                self._safe(a)

    def stop_all(self):
        for name in list(self.running):
            self.stop(name)

    def fail(self, name, exc):
        """A feature raised: stop it, keep it disabled, report why."""
        reason = format_exception(exc)
        self.stop(name)
        s = self.setting(name)
        s["error"] = reason
        s["error_set"] = self.set_id
        self._keep()
        self.emit_event("feature_error", name, reason)

    def enable(self, name, on):
        from .configure import enable

        enable(self, name, on)

    def config(self, name):
        """The feature's effective config (a copy)."""
        cfg = self.configs.get(name)
        if cfg is None:
            from .values import effective

            cfg = self.configs[name] = effective(self.manifests[name], self.setting(name).get("config", {}))
        return dict(cfg)

    def set_config(self, name, values):
        """Validate every value first, then store and apply them together.
        Raises FeatureError (unknown feature) or ConfigError."""
        from .configure import set_config

        return set_config(self, name, values)

    def set_data(self, key, value):
        """Keep what the gateway sent (on flash: a price table must outlive a
        reboot) and tell the features. Raises ConfigError if it is too big."""
        data = dict(self.data)
        data[key] = value
        import json

        if len(json.dumps(data)) > MAX_DATA:
            raise ConfigError("data of more than %d bytes in all is more than a device keeps" % MAX_DATA)
        self.store.save("data", data)
        self.data = data
        self.bus.emit("data." + key, value)

    def busy(self, actuators):
        """Why a running feature is busy now (docs/ota.md 4.3), or None: its
        manifest's `busy` names actuators it drives, busy while on (true, or
        above 0) in actuators (what the runtime last drove)."""
        for name in sorted(self.running):
            for a in self.manifests.get(name, {}).get("busy", ()):
                v = actuators.get(a)
                if v is True or (type(v) in (int, float) and v > 0):
                    return "busy: %s is working (%s on)" % (name, a)
        return None

    # ---- reporting ---------------------------------------------------------

    def status(self):
        """The installed features: version, enabled, running, error."""
        out = {}
        for name in sorted(set(self.manifests) | set(self.broken)):
            m = self.manifests.get(name, {})
            s = self.settings.get(name, {})
            out[name] = {
                "version": m.get("version", "?"),
                "enabled": s.get("enabled", True),
                "running": name in self.running,
            }
            err = self.broken.get(name) or s.get("error")
            if err:
                out[name]["error"] = err[:_MAX_ERROR]
            elif name in self.waiting:
                out[name]["waiting"] = self.waiting[name]
        return out

    def setting(self, name):
        return self.settings.setdefault(name, {})

    def save_settings(self):
        self.store.save("features", self.settings)

    def _keep(self):
        # the settings as the runtime changes them by itself: a flash that
        # refuses them must not stop the device
        try:
            self.save_settings()
        except StoreError as exc:
            self.emit_event("storage_error", None, "settings not saved: %s" % exc)

    def _safe(self, actuator):
        cap = self.rt.hal.caps.get(actuator, {})
        try:
            self.rt.drive(actuator, cap.get("safe", False if cap.get("kind") == "relay" else 0))
        except HalError:
            pass
