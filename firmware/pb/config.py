# The device's settings (config.json, written by provisioning): one schema,
# checked at boot (pb/prepare.py load_config, when the file changed since it
# last passed) and let go after.
from .errors import ConfigError
from .ids import valid_id

# Each key with its type, default and range; an error names the key
# (docs/ota.md 4.7 lists them, and a test holds the table to this). One
# line a key: key, type, default, lowest, highest. The type is "id" (a
# device id), "str" (lowest and highest bound its length), "int", "num",
# "bool", or the values allowed, joined by "|"; a dotted key is a field of
# an object; the default "!" means required, "-" that the key may be left
# out (and an object all of whose keys may be, too). The module that reads
# a key gives it this default where it reads it (a test holds each to it):
# a dict with every default filled in would cost a small board RAM for
# good. Kept as one string: a table of tuples would cost the boot more RAM.
SCHEMA = """
v int 1 1 1
device id ! 1 32
model str ! 1 32
board str ! 1 64
hal str host 1 16
repl closed - 0 0
broker.host str ! 1 253
broker.port int 1883 1 65535
broker.user str - 0 64
broker.password str - 0 256
broker.keepalive int 30 0 65535
broker.clean bool true 0 1
broker.queue int 32 1 256
broker.cafile str - 1 64
wifi.ssid str - 1 32
wifi.password str - 0 64
link.serial str - 1 128
link.baud int 115200 50 4000000
link.tx int - 0 48
link.rx int - 0 48
link.ble bool - 0 1
ntp str pool.ntp.org 0 253
telemetry_ms int 10000 10 86400000
sample_ms int 1000 10 86400000
scan_ms int 10000 10 86400000
utc_offset_min int 0 -720 840
ram_reserve int 8192 0 65536
ota_mode lean - 0 0
ota_ram int 48000 0 16777216
ota_chunk int 4096 64 4096
ota_window int 8 1 32
ota_timeout_ms int 3000 10 600000
ota_tries int 8 1 100
ota_deadline_s num 900 1 604800
ota_trial_s num 60 0 86400
ota_battery_min int 30 0 100
ota_busy_max_s num 3600 0 604800
"""


def check(c):
    """c (config.json's settings) if it fits SCHEMA; else raise
    ConfigError naming the key."""
    if not isinstance(c, dict):
        raise ConfigError("config: not a JSON object")
    for k in c:
        if _odd(k) or "\n%s " % k not in SCHEMA and "\n%s." % k not in SCHEMA:
            raise ConfigError("config: unknown key %r" % k)
    for line in SCHEMA.split("\n"):
        if not line:
            continue
        key, kind, default, low, high = line.split(" ")
        lo, hi = int(low), int(high)
        src, name = c, key
        i = key.find(".")
        if i > 0:
            src, name = c.get(key[:i]), key[i + 1 :]
            if isinstance(src, dict):
                for k in src:
                    if _odd(k) or "\n%s.%s " % (key[:i], k) not in SCHEMA:
                        raise ConfigError("config: unknown key %r" % (key[:i] + "." + k))
            elif src is not None:
                raise ConfigError("config: %r must be an object" % key[:i])
        if src is None or name not in src:
            if default == "!":
                raise ConfigError("config: %r is required" % key)
            continue
        v = src[name]
        if kind == "id":
            if not valid_id(v):
                raise ConfigError("config: %r must be 1-32 of a-z 0-9 - _, not %r" % (key, v))
        elif kind == "bool":
            if v is not True and v is not False:
                raise ConfigError("config: %r must be true or false, not %r" % (key, v))
        elif kind == "str":
            if not isinstance(v, str) or not lo <= len(v) <= hi:
                raise ConfigError("config: %r must be a string of %d-%d characters" % (key, lo, hi))
        elif kind == "int" or kind == "num":
            if (
                v is True
                or v is False
                or not isinstance(v, int if kind == "int" else (int, float))
                or not lo <= v <= hi  # (NaN fails this too)
            ):
                what = "an integer" if kind == "int" else "a number"
                raise ConfigError("config: %r must be %s within %d..%d, not %r" % (key, what, lo, hi, v))
        elif v not in kind.split("|"):
            raise ConfigError("config: %r must be one of %s, not %r" % (key, kind.replace("|", ", "), v))
    return c


def _odd(k):
    # a key that could match more than a key of the schema's text
    return not k or " " in k or "\n" in k or "." in k
