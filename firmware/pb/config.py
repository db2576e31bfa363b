# The device's settings (config.json, written by provisioning): one schema,
# each key with its type, default and range, checked at boot with a clear
# error (docs/ota.md 4.7 lists them). Loaded at boot and let go after. The
# modules read a key where they use it, with the schema's default (a test
# holds each to it): settings kept in one dict with every default filled in
# would cost a small board a kilobyte for good.
from .errors import ConfigError
from .ids import valid_id

# One line a key: key, type, default, lowest, highest. The type is "id" (a
# device id), "str" (lowest and highest bound its length), "int", "num",
# "bool", or the values allowed, joined by "|"; a dotted key is a field of an
# object; the default "!" means required, "-" that the key may be left out
# (an object all of whose keys may be left out may be, too). Kept as one
# string: a table of tuples would cost the boot more RAM.
SCHEMA = """
v int 1 1 1
device id ! 1 32
model str ! 1 32
board str ! 1 64
hal str host 1 16
broker.host str ! 1 253
broker.port int 1883 1 65535
broker.user str - 0 64
broker.password str - 0 256
broker.keepalive int 30 0 65535
broker.clean bool true 0 1
broker.queue int 32 1 256
wifi.ssid str - 1 32
wifi.password str - 0 64
telemetry_ms int 10000 10 86400000
sample_ms int 1000 10 86400000
utc_offset_min int 0 -720 840
ram_reserve int 8192 0 65536
ota_mode lean - 0 0
ota_ram int 48000 0 16777216
ota_chunk int 2048 16 4096
ota_window int 2 1 16
ota_timeout_ms int 3000 10 600000
ota_tries int 8 1 100
ota_deadline_s num 900 1 604800
ota_trial_s num 60 0 86400
"""


def schema():
    """SCHEMA as (key, type, default, lowest, highest) tuples; the type of
    an enumeration is the tuple of its values, a default None: optional,
    REQUIRED: required."""
    out = []
    for line in SCHEMA.split("\n"):
        if line:
            key, kind, default, lo, hi = line.split(" ")
            out.append((key, _kind(kind), _value(kind, default), int(lo), int(hi)))
    return out


REQUIRED = "!"


def _kind(kind):
    return kind if kind in ("id", "str", "int", "num", "bool") else tuple(kind.split("|"))


def _value(kind, text):
    if text in ("!", "-"):
        return REQUIRED if text == "!" else None
    if kind == "bool":
        return text == "true"
    if kind in ("int", "num"):
        return int(text)
    return text


def _fits(kind, value, lo, hi):
    if isinstance(kind, tuple):
        return value in kind
    if kind == "id":
        return valid_id(value)
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "str":
        return isinstance(value, str) and lo <= len(value) <= hi
    if kind == "int":
        return isinstance(value, int) and lo <= value <= hi
    return isinstance(value, (int, float)) and lo <= value <= hi  # "num" (NaN fails too)


def _want(kind, lo, hi):
    if isinstance(kind, tuple):
        return "one of " + ", ".join(kind)
    if kind == "id":
        return "1-32 of a-z 0-9 - _"
    if kind == "bool":
        return "true or false"
    if kind == "str":
        return "a string of %d-%d characters" % (lo, hi)
    return "%s within %r..%r" % ("an integer" if kind == "int" else "a number", lo, hi)


def check(raw):
    """Raise ConfigError, naming the key, unless the settings of config.json
    (a dict) fit SCHEMA; returns raw."""
    if not isinstance(raw, dict):
        raise ConfigError("config: not a JSON object")
    table = schema()
    keys = {}
    for entry in table:
        keys[entry[0]] = keys[entry[0].split(".")[0]] = True
    for k in raw:
        if k not in keys:
            raise ConfigError("config: unknown key %r" % k)
    for key, kind, default, lo, hi in table:
        src = raw
        name = key
        i = key.find(".")
        if i > 0:
            parent = key[:i]
            name = key[i + 1 :]
            src = raw.get(parent)
            if src is None:
                if default is REQUIRED:
                    raise ConfigError("config: %r is required" % key)
                continue  # an object left out, whose keys may be
            if not isinstance(src, dict):
                raise ConfigError("config: %r must be an object" % parent)
            for k in src:
                if parent + "." + k not in keys:
                    raise ConfigError("config: unknown key %r" % (parent + "." + k))
        if name in src:
            value = src[name]
            if not _fits(kind, value, lo, hi):
                raise ConfigError("config: %r must be %s, not %r" % (key, _want(kind, lo, hi), value))
        elif default is REQUIRED:
            raise ConfigError("config: %r is required" % key)
    return raw
