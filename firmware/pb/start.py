# The runtime's entry point (main.py calls run()): prepare the boot
# (pb/prepare.py), run update mode or the runtime, and turn every way it can
# end into a reset.
from .compat import MICROPYTHON, asyncio, forget, format_exception, print_exception, sleep_ms
from .store import Store

# Imported one at a time with a collection in between: compiling a module
# needs a contiguous block, and a fragmented heap is what fails first on a
# small board. (tests/firmware/test_module_lists.py checks these names.)
RUNTIME_MODULES = (
    "pb.net.mqtt",
    "pb.net.mqtt_client",
    "pb.bus",
    "pb.features",
    "pb.ota.updates",
    "pb.runtime",
)


def _import_runtime(line):
    import gc

    # (a device on a line, config.json "link", loads its link as the runtime starts)
    for name in RUNTIME_MODULES[2:] if line else RUNTIME_MODULES:
        gc.collect()
        __import__(name)
    gc.collect()


def _prepare(root, chosen):
    from .prepare import prepare

    out = prepare(root, chosen)
    forget(("pb.prepare",))
    return out


async def _run(root, chosen):
    config, hal, chosen, lean, data = _prepare(root, chosen)
    hal.reset(await run_device(root, config, hal, chosen, lean, data=data))


async def run_device(root, config, hal, chosen, lean, importer=None, log=None, on_device=None, data=None):
    """From the boot loader's choice to the next reset: update mode, or the runtime
    with a runtime crash turned into a clean restart. Returns the cause.
    The simulator runs its virtual devices through this same function
    (on_device(device) hands it the runtime's Device). data: the folder of
    the runtime's records (pb/ota/flash.py DATA under root)."""
    if lean:
        ca = config["broker"].get("cafile")
        if ca:  # TLS: update mode makes its client with this (pb/net/tls.py), else the plain one
            from .net.tls import client_for

            ca = client_for(root + "/" + ca)
        from .ota.update_mode import run as update_mode

        pointer = chosen[1]
        return await update_mode(root, config, hal, pointer["counter"] if pointer else 0, ca)
    if MICROPYTHON:
        _import_runtime("link" in config)
    if data is None:
        from .ota.flash import DATA

        data = root + "/" + DATA
    from .ota.updates import Boot
    from .runtime import Device

    device = Device(config, hal, Store(data), importer=importer, log=log, boot=Boot(*chosen), base=root)
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


def run(root=".", chosen=None):
    """Run the device until it resets. chosen: the boot loader's choice of
    the set (firmware/loader.py boot), made before this runtime was loaded;
    every runtime takes it in this shape. On a board a reset never returns;
    a host backend's reset returns here, and main.py starts everything
    again with fresh modules, as a board would."""
    from .hal import Reboot

    try:
        asyncio.run(_run(root, chosen))
    except Reboot as r:
        print("pb: reset (%s)" % r.cause)
        if MICROPYTHON:
            asyncio.new_event_loop()  # drop the old run's leftover tasks
