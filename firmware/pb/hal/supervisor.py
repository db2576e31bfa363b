# The unix port's stand-in for a board's power and reset (main.py): the
# device runs as a child process, started again whenever it resets, so that
# every boot has a fresh heap as on a board; a child killed outright is a
# power cut, and the whole device goes down. Runs in the parent process
# only, from the factory runtime (never a slot's): none of its names take
# the device's RAM. Never loaded on a board.
import sys


def image():
    # A host with app partitions (pb/hal/partitions.py): the ESP32's
    # bootloader chooses the image before every start (and rolls back one
    # never marked valid); the device learns it from PB_IMAGE
    try:
        from .partitions import boot_env
    except ImportError:
        return ""
    return boot_env()


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
    # on a board) or its REPL ended, "watchdog" after it crashed
    cause = ""
    while True:
        cmd = "PB_CHILD=1 PB_RESET=%s %sexec %s'%s' %s" % (
            cause,
            image(),
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
        if code == 76:
            # a boot that leaves the port to the REPL (main.py device()):
            # the REPL runs in the device's place, on the same terminal, and
            # its end (Ctrl-D: a soft reset) is the device's next reset
            print("pb: the REPL until the next reset (the command repl.open)")
            os.system("%sexec %s'%s' %s" % (image(), tie, exe, " ".join("'%s'" % a for a in argv[:-1])))
            continue
        if code != 75:
            cause = "watchdog"
            time.sleep(1)  # it crashed: a board's watchdog would reset it
