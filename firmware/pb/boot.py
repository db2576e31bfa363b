# Start-up: read the provisioned config and board file, pick the HAL
# backend, run the device, and turn every way it can end into a reset.
import json

from .compat import MICROPYTHON, asyncio, forget, format_exception, print_exception, sleep_ms
from .errors import ConfigError
from .features import API
from .store import Store, read_bytes
from .wire import valid_id

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


# Imported one at a time with a collection in between: compiling a module
# needs a contiguous block, and a fragmented heap is what fails first on a
# small board.
_MODULES = ("pb.mqtt", "pb.mqtt_client", "pb.bus", "pb.features", "pb.updates", "pb.runtime")


def _import_runtime():
    import gc

    for name in _MODULES:
        gc.collect()
        __import__(name)
    gc.collect()


def _choose(root, config, hal):
    # a staged update is installed now, while little else is in RAM; then
    # the modules only the boot needs go, so the runtime gets their RAM
    from .guard import decide

    chosen = decide(root, hal.fault_point, (config["model"], hal.caps, API), hal.time)
    forget(("pb.guard", "pb.install", "pb.trust", "pb.ed25519", "pb.sha512", "pb.otafs", "pb.manifest"))
    return chosen


async def _run(root):
    config = load_config(root)
    hal = make_hal(config, root)
    from .updates import Boot

    boot = Boot(*_choose(root, config, hal))
    if MICROPYTHON:
        _import_runtime()
    from .runtime import Device

    device = Device(config, hal, Store(root + "/data"), boot=boot, base=root)
    try:
        cause = await device.run()
    except Exception as exc:  # noqa: BLE001 - any runtime bug ends in a clean restart
        # a runtime bug: record it, calm down, restart clean
        print_exception(exc)
        device.state["reset_request"] = "crash"
        device.state["last_crash"] = format_exception(exc)[:200]
        device.store.save("state", device.state)
        hal.safe_state()
        await sleep_ms(2000)
        cause = "crash"
    hal.reset(cause)


def main(root="."):
    """Run the device for ever; a host backend's reset restarts it here."""
    from .features import forget_modules
    from .hal import Reboot

    while True:
        try:
            asyncio.run(_run(root))
        except Reboot as r:
            print("pb: reset (%s)" % r.cause)
            forget_modules()
            if MICROPYTHON:
                asyncio.new_event_loop()  # drop the old run's leftover tasks
            continue
        except KeyboardInterrupt:
            return
