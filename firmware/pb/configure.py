# Changing features while they run: enabling, disabling, settings. Loaded
# when asked (a command), not kept: a device that is never
# reconfigured does not spend the RAM.
from .compat import format_exception
from .errors import ConfigError, FeatureError


def enable(host, name, on):
    if name not in host.manifests:
        raise FeatureError("no feature %r" % name)
    s = host.setting(name)
    s["enabled"] = on
    s["error"] = None
    if on and name not in host.running:
        host.save_settings()
        if not host.start(name) and name not in host.waiting:
            raise FeatureError("%s did not start: %s" % (name, s["error"]))
    elif not on:
        host.waiting.pop(name, None)  # (not waiting for hardware to start)
        if name in host.running:
            host.stop(name)
    host.save_settings()


def set_config(host, name, values):
    """Validate every value first, then store and apply them together.
    Raises FeatureError (unknown feature) or ConfigError."""
    if name not in host.manifests:
        raise FeatureError("no feature %r" % name)
    if not isinstance(values, dict) or not values:
        raise ConfigError("values must be a non-empty object")
    from .values import check_value, effective

    spec = host.manifests[name].get("config", {})
    for key in values:
        if key not in spec:
            raise ConfigError("%s has no setting %r (has: %s)" % (name, key, ", ".join(sorted(spec))))
        check_value(spec[key], key, values[key])
    mod = host.modules.get(name)
    if mod is not None and hasattr(mod, "check_config"):
        merged = host.config(name)
        merged.update(values)
        try:
            mod.check_config(merged)
        except Exception as exc:  # noqa: BLE001 - feature code: any failure is a refusal
            raise ConfigError(str(exc) if isinstance(exc, ValueError) else format_exception(exc)) from None
    setting = host.setting(name)
    old = dict(setting.get("config", {}))
    setting["config"] = dict(old)
    setting["config"].update(values)
    host.save_settings()
    host.configs[name] = effective(host.manifests[name], setting["config"])
    cfg = host.config(name)
    obj = host.running.get(name)
    if obj is None:
        return cfg
    error = None
    if hasattr(obj, "on_config"):
        host.contexts[name].config.update(cfg)
        try:
            for key in values:
                obj.on_config(key, values[key])
        except Exception as exc:  # noqa: BLE001 - feature code
            error = format_exception(exc)
    else:
        host.stop(name)
        if not host.start(name):
            error = setting.get("error")
    if error is not None:
        # the feature cannot live with the new settings: put back the
        # old ones and the feature as it ran, and say why
        setting["config"] = old
        setting["error"] = None
        host.save_settings()
        host.configs[name] = effective(host.manifests[name], old)
        host.stop(name)
        host.start(name)
        raise ConfigError("%s rejected the new settings (%s); kept the previous ones" % (name, error))
    return cfg
