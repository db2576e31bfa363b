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


def bootloader():
    # A host with app partitions (flash/, pb/hal/partitions.py): what the
    # ESP32's bootloader does before every start, choosing the image to run
    # (and rolling back one never marked valid); the device learns the
    # label from PB_IMAGE, as a board asks esp32.Partition
    import os

    try:
        os.stat("flash")
    except OSError:
        return ""
    from pb.hal.partitions import boot

    return "PB_IMAGE=%s " % boot(".").label


def supervise():
    import os
    import time

    with open("/proc/self/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    # the interpreter's own arguments (-X heapsize=...), as it was started;
    # it may be a script run by another interpreter, so find it by name
    for i in range(len(argv)):
        if argv[i] == sys.executable or argv[i].endswith("/micropython"):  # type: ignore[attr-defined]
            argv = argv[i + 1 :]
            break
    # The child dies with this process, as a board's CPU does with its power:
    # setpriv (util-linux) asks the kernel to kill it when its parent goes.
    tie = "setpriv --pdeathsig KILL " if os.system("command -v setpriv >/dev/null") == 0 else ""
    exe = sys.executable  # type: ignore[attr-defined]  # the unix port has it
    # PB_RESET tells each start why the last one ended, as a board's reset
    # cause register does (pb/hal/host.py): nothing at the first start (the
    # power came on), "hard" after the device reset itself (machine.reset()
    # on a board), "watchdog" after it crashed
    cause = ""
    while True:
        cmd = "PB_CHILD=1 PB_RESET=%s %sexec %s'%s' %s" % (
            cause,
            bootloader(),
            tie,
            exe,
            " ".join("'%s'" % a for a in argv),
        )
        status = os.system(cmd)
        if status & 0x7F:
            sys.exit(128 + (status & 0x7F))  # killed: the power is gone
        code = status >> 8
        if code == 0:
            return  # stopped on purpose (Ctrl-C)
        cause = "hard"
        if code != 75:
            cause = "watchdog"
            time.sleep(1)  # it crashed: a board's watchdog would reset it


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
        supervise()
    else:
        device()
except KeyboardInterrupt:
    pass
except SystemExit:
    raise
except BaseException as exc:  # noqa: BLE001 - last line of defence on the board
    last_resort(exc)
