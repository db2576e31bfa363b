# Hand over to the runtime; whatever escapes it ends in a reset.
#
# On a board, machine.reset() restarts everything. On the unix port this
# process stands in for the board's reset: it runs the device as a child
# process and starts it again whenever the device resets, so that every boot
# has a fresh heap as on a board. A child killed outright is a power cut: the
# whole device goes down. Under CPython the runtime restarts in-process.
import sys


def choose():
    # the boot loader (never updated) picks the set, runtime and features,
    # and puts its runtime first on sys.path before any of pb/ is imported;
    # then it goes: an install's signature check at this boot needs its RAM
    import gc

    from loader import boot

    chosen = boot(".")
    sys.modules.pop("loader", None)
    gc.collect()
    return chosen


def device():
    chosen = choose()
    from pb.start import run

    run(".", chosen)


def last_resort(exc):
    if hasattr(sys, "print_exception"):
        sys.print_exception(exc)
    else:
        import traceback  # type: ignore[import-not-found]  # CPython only

        traceback.print_exc()
    try:
        import machine

        machine.reset()
    except (ImportError, AttributeError):
        sys.exit(1)


try:
    if sys.implementation.name != "micropython":
        import os

        path = list(sys.path)
        env = os.environ  # type: ignore[attr-defined]  # CPython only
        env.pop("PB_RESET", None)
        while True:
            device()
            env["PB_RESET"] = "hard"  # it reset itself (pb/hal/host.py)
            sys.path[:] = path  # a feature set's folder goes with its modules
            for name in list(sys.modules):
                if name.split(".")[0] in ("pb", "features", "loader"):
                    del sys.modules[name]
    elif sys.platform == "linux":
        import os

        if sys.path[0].startswith("/"):
            # modules by the paths a board gives them ("pb/store.mpy", from
            # the device's folder): each loaded module keeps its path in RAM
            sys.path[0] = ""
        if os.getenv("PB_CHILD"):
            device()
            sys.exit(75)  # a reset: the parent starts the device again
        # (the supervisor's code apart: none of its names in the device's RAM)
        from pb.hal.supervisor import supervise

        supervise()
    else:
        device()
except KeyboardInterrupt:
    pass
except SystemExit:
    raise
except BaseException as exc:  # noqa: BLE001 - last line of defence on the board
    last_resort(exc)
