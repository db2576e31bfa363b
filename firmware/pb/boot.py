# Start-up: read the provisioned config and board file, pick the HAL
# backend, run the device, and turn every way it can end into a reset.
from .compat import MICROPYTHON, asyncio, forget, format_exception, print_exception, sleep_ms
from .store import Store

FACTORY = "features"


class Boot:
    """What the boot guard decided (pb/guard.py): `root` is the feature
    folder to run (None: safe mode), `pointer` the pointer record (None:
    factory set), `trial` whether this boot is a trial, `report` an update
    status the guard had to give, or None."""

    def __init__(self, root, pointer=None, trial=False, report=None):
        self.root = root
        self.pointer = pointer
        self.trial = trial
        self.report = report

    def counter(self):
        return self.pointer["counter"] if self.pointer else 0

    def manifest(self):
        return self.pointer.get("manifest") if self.pointer else None

    def set_dir(self):
        return self.pointer["set"] if self.pointer else FACTORY


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


def _prepare(root):
    from .setup import prepare

    out = prepare(root)
    forget(("pb.setup",))
    return out


async def _run(root):
    config, hal, chosen, lean = _prepare(root)
    hal.reset(await run_device(root, config, hal, chosen, lean))


async def run_device(root, config, hal, chosen, lean, importer=None, log=None, on_device=None):
    """From the guard's choice to the next reset: update mode, or the runtime
    with a runtime crash turned into a clean restart. Returns the cause.
    The simulator runs its virtual devices through this same function
    (on_device(device) hands it the runtime's Device)."""
    boot = Boot(*chosen)
    if lean:
        from .updatemode import run as update_mode

        return await update_mode(root, config, hal, boot.counter(), boot.root)
    if MICROPYTHON:
        _import_runtime()
    from .runtime import Device

    device = Device(config, hal, Store(root + "/data"), importer=importer, log=log, boot=boot, base=root)
    if on_device is not None:
        on_device(device)
    try:
        return await device.run()
    except Exception as exc:  # noqa: BLE001 - any runtime bug ends in a clean restart
        # a runtime bug: record it, calm down, restart clean
        print_exception(exc)
        device.state["reset_request"] = "crash"
        device.state["last_crash"] = format_exception(exc)[:200]
        device.keep_state()
        hal.safe_state()
        await sleep_ms(2000)
        return "crash"


def run(root="."):
    """Run the device until it resets. On a board a reset never returns; a
    host backend's reset returns here, and main.py starts everything again
    with fresh modules, as a board would."""
    from .hal import Reboot

    try:
        asyncio.run(_run(root))
    except Reboot as r:
        print("pb: reset (%s)" % r.cause)
        if MICROPYTHON:
            asyncio.new_event_loop()  # drop the old run's leftover tasks
