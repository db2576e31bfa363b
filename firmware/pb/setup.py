# Everything the boot does once before the runtime runs: read the config and
# the board file, pick the HAL backend, install a staged update, choose the
# feature set. pb/boot.py lets this module go afterwards.
import json

from . import API
from .compat import forget
from .errors import ConfigError
from .ids import valid_id
from .store import read_bytes

CONFIG_FILE = "config.json"


def load_json(path, what):
    data = read_bytes(path)
    if data is None:
        raise ConfigError("%s missing: %s" % (what, path))
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ConfigError("%s is not JSON (%s): %s" % (what, path, exc)) from None
    if not isinstance(value, dict):
        raise ConfigError("%s is not a JSON object: %s" % (what, path))
    return value


def load_config(root="."):
    """The device's config.json, checked. Raises ConfigError."""
    c = load_json(root + "/" + CONFIG_FILE, "device config")
    if not valid_id(c.get("device")):
        raise ConfigError("config: 'device' must be 1-32 of a-z 0-9 - _")
    for key in ("model", "board"):
        if not isinstance(c.get(key), str) or not c[key]:
            raise ConfigError("config: %r is required" % key)
    b = c.get("broker")
    if not isinstance(b, dict) or not isinstance(b.get("host"), str):
        raise ConfigError("config: 'broker' needs a 'host'")
    return c


def make_hal(config, root="."):
    board = load_json(root + "/boards/" + config["board"] + ".json", "board file")
    kind = config.get("hal", "host")
    if kind == "host":
        from .hal.host import HostHal

        return HostHal(board, root)
    if kind == "esp32":
        from .hal.esp32 import Esp32Hal

        return Esp32Hal(board, root)
    raise ConfigError("config: unknown hal %r (host, esp32)" % kind)


def lean_job(root):
    """True if a download waits to run in update mode (pb/updatemode.py)."""
    if read_bytes(root + "/ota/offer.json") is not None:
        return True
    data = read_bytes(root + "/ota/job.json")
    try:
        job = json.loads(data) if data else None
    except ValueError:
        return False
    return isinstance(job, dict) and job.get("phase") == "downloading" and job.get("mode") == "lean"


def choose(root, config, hal):
    # a staged update is installed now, while little else is in RAM, and the
    # device resets after it; then the modules only the boot needs go, so
    # the runtime gets their RAM
    from .guard import check_fetched, decide, install_staged

    device = (config["device"], config["model"], hal.caps, API)
    if install_staged(root, device, hal.time(), hal.fault_point):
        hal.reset("update")
    check_fetched(root, device, hal.time())  # a manifest update mode fetched: before its blobs
    chosen = decide(root, hal.fault_point)
    forget(
        (
            "pb.guard",
            "pb.install",
            "pb.trust",
            "pb.ed25519",
            "pb.sha512",
            "pb.otafs",
            "pb.forms",
            "pb.manifest",
        )
    )
    return chosen


def prepare(root):
    """(config, hal, the guard's choice, whether to run in update mode)."""
    config = load_config(root)
    hal = make_hal(config, root)
    return config, hal, choose(root, config, hal), lean_job(root)
