# Feature settings checked against their spec (a manifest's "config"), and
# a feature's effective settings. Small: loaded to change a setting.
from .errors import ConfigError

_MAX_LIST = 48
MAX_STR = 64


def is_num(x):
    return not isinstance(x, bool) and isinstance(x, (int, float))


def check_value(spec, key, value):
    """A config value checked against its spec; raises ConfigError."""
    t = spec["type"]
    ok = True
    if t == "boolean":
        ok = isinstance(value, bool)
    elif isinstance(value, bool):
        ok = False
    elif t == "number":
        ok = isinstance(value, (int, float)) and value == value
    elif t == "integer":
        ok = isinstance(value, int)
    elif t == "string":
        ok = isinstance(value, str) and len(value) <= spec.get("max_len", MAX_STR)
    elif t == "array":
        ok = isinstance(value, list) and len(value) <= spec.get("max_len", _MAX_LIST)
    if not ok:
        raise ConfigError("%s must be a %s" % (key, t))
    if t in ("number", "integer"):
        lo = spec.get("min")
        hi = spec.get("max")
        if is_num(lo) and value < lo:
            raise ConfigError("%s must be at least %r" % (key, lo))
        if is_num(hi) and value > hi:
            raise ConfigError("%s must be at most %r" % (key, hi))
    if "enum" in spec and value not in spec["enum"]:
        raise ConfigError("%s must be one of %s" % (key, ", ".join([str(x) for x in spec["enum"]])))
    return value


def effective(m, stored):
    """A feature's config: manifest defaults, overridden by stored values
    that still fit the schema (a newer manifest may have changed it)."""
    spec = m.get("config", {})
    out = {}
    for key in spec:
        out[key] = spec[key]["default"]
        if key in stored:
            try:
                out[key] = check_value(spec[key], key, stored[key])
            except ConfigError:
                pass
    return out
