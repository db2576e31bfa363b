# Feature manifests and config values, checked. Needed when features are
# discovered and when a setting changes, not in between: the runtime lets
# this module go after boot to give its RAM back.
import json
import os

from .errors import ConfigError, FeatureError
from .ids import valid_id
from .store import read_bytes
from .values import MAX_STR, check_value, is_num

_CONFIG_TYPES = ("number", "integer", "boolean", "string", "array")


def _str_list(m, key, where):
    v = m.get(key, [])
    if not isinstance(v, list):
        raise FeatureError("%s: %s must be a list" % (where, key))
    for x in v:
        if not isinstance(x, str) or not x:
            raise FeatureError("%s: %s must list names" % (where, key))
    return v


def _semver(v):
    """MAJOR.MINOR.PATCH of digits, optionally -prerelease."""
    if not isinstance(v, str) or len(v) > MAX_STR:
        return False
    parts = v.split("-", 1)[0].split(".")
    if len(parts) != 3:
        return False
    for p in parts:
        if not p or not p.isdigit():
            return False
    return True


def check_manifest(m, name=None):
    """Validate a feature manifest (a dict); returns it. Raises FeatureError."""
    if not isinstance(m, dict):
        raise FeatureError("manifest is not a JSON object")
    fname = m.get("name")
    if not valid_id(fname) or "-" in fname:
        raise FeatureError("manifest name %r is not a valid feature name" % (fname,))
    where = "feature " + fname
    if name is not None and fname != name:
        raise FeatureError("%s: manifest name does not match folder %r" % (where, name))
    if not _semver(m.get("version")):
        raise FeatureError("%s: version must be a semver string like 1.2.0" % where)
    api = m.get("api")
    if not isinstance(api, int) or isinstance(api, bool):
        raise FeatureError("%s: api must be an integer" % where)
    requires = _str_list(m, "requires", where)
    perms = m.get("permissions", {})
    if not isinstance(perms, dict):
        raise FeatureError("%s: permissions must be an object" % where)
    for key in ("reads", "drives"):
        for cap in _str_list(perms, key, where):
            if cap not in requires:
                raise FeatureError("%s: permission %s %r is not in requires" % (where, key, cap))
    publishes = _str_list(perms, "publishes", where)
    streams = m.get("streams", {})
    if not isinstance(streams, dict):
        raise FeatureError("%s: streams must be an object" % where)
    for field in streams:
        if field not in publishes:
            raise FeatureError("%s: stream %r is not a field it publishes" % (where, field))
        check_stream(streams[field], "%s: stream %r" % (where, field))
    for a in _str_list(m, "busy", where):
        if a not in perms.get("drives", []):
            raise FeatureError("%s: busy %r is not an actuator it drives" % (where, a))
    config = m.get("config", {})
    if not isinstance(config, dict):
        raise FeatureError("%s: config must be an object" % where)
    for key in config:
        spec = config[key]
        if not isinstance(spec, dict) or spec.get("type") not in _CONFIG_TYPES:
            raise FeatureError("%s: config %r needs a type (%s)" % (where, key, ", ".join(_CONFIG_TYPES)))
        if "default" not in spec:
            raise FeatureError("%s: config %r needs a default" % (where, key))
        for bound in ("min", "max"):
            if bound in spec and not is_num(spec[bound]):
                raise FeatureError("%s: config %r: %s must be a number" % (where, key, bound))
        if "enum" in spec and not isinstance(spec["enum"], list):
            raise FeatureError("%s: config %r: enum must be a list" % (where, key))
        try:
            check_value(spec, key, spec["default"])
        except ConfigError as exc:
            raise FeatureError("%s: default of %s" % (where, exc)) from None
    return m


SENSITIVITY = ("low", "personal", "sensitive")


def check_stream(s, where):
    """A stream's description (docs/protocol.md 12): what it tells, how
    sensitive, shared or kept local by default, needed for operation or not."""
    if (
        not isinstance(s, dict)
        or not isinstance(s.get("doc"), str)
        or not s["doc"]
        or s.get("sensitivity") not in SENSITIVITY
        or s.get("share", "share") not in ("share", "local")
        or not isinstance(s.get("operational", False), bool)
    ):
        raise FeatureError(
            "%s needs a doc, a sensitivity (low, personal or sensitive), share or local by default, "
            "operational true or false" % where
        )


def read_manifest(root, name):
    data = read_bytes(root + "/" + name + "/manifest.json")
    if data is None:
        raise FeatureError("feature %s has no manifest.json" % name)
    try:
        m = json.loads(data)
    except ValueError as exc:
        raise FeatureError("feature %s: manifest.json is not JSON: %s" % (name, exc)) from None
    return check_manifest(m, name)


def list_features(root):
    """Names of the feature folders under root (those with a manifest)."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [n for n in names if valid_id(n) and read_bytes(root + "/" + n + "/manifest.json") is not None]
