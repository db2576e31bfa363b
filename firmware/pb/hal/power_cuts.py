# Power-cut injection for tests on the host backend (docs/ota.md 4.9): a
# test's hal/faults.json {"crash_at": N, "log": true} makes the Nth fault
# point kill the device with SIGKILL, {"crash_name": NAME, "crash_nth": M,
# "log": true} the Mth point of that name (a download's number of points
# varies with its timing: a name is exact); "log" lists the points passed in
# hal/fault_points.log, one line each, numbered across resets (the device's
# processes continue the count the log holds). Loaded only where a test put
# that file: a board never does.
import json

from ..store import read_bytes

FAULT_LOG = "fault_points.log"

# [plan, points passed, points of the plan's crash_name passed]: once per
# process, so soft resets keep counting
_fault = [None, 0, 0]  # type: list


def load(path):
    """True if the plan in path asks for anything (read once per process)."""
    if _fault[0] is None:
        plan = {}
        try:
            plan = json.loads(read_bytes(path) or b"{}")
        except ValueError:
            pass
        _fault[0] = plan if isinstance(plan, dict) else {}
    return bool(_fault[0])


def passed(folder, name):
    """A fault point named name was passed: count it, log it, cut the power
    where the plan says."""
    plan = _fault[0]
    if not plan:
        return
    if _fault[1] == 0 and plan.get("log"):
        _fault[1], _fault[2] = _lines(folder + "/" + FAULT_LOG, plan.get("crash_name"))
    _fault[1] += 1
    n = _fault[1]
    if plan.get("log"):
        with open(folder + "/" + FAULT_LOG, "a") as f:
            f.write("%d %s\n" % (n, name))
    if n == plan.get("crash_at"):
        _kill_self()
    if name == plan.get("crash_name"):
        _fault[2] += 1
        if _fault[2] == plan.get("crash_nth", 1):
            _kill_self()


def _kill_self():
    """SIGKILL this process: a power cut, with no cleanup of any kind."""
    import os

    if hasattr(os, "kill"):
        os.kill(os.getpid(), 9)
    os.system("kill -9 $PPID")  # MicroPython's unix port: the shell's parent is us


def _lines(path, name=None):
    """(the lines of the log so far, those naming name): read a line at a
    time (the log of a long update is more than a small heap has in one
    piece)."""
    n = named = 0
    try:
        with open(path) as f:
            while True:
                line = f.readline()
                if not line:
                    return n, named
                n += 1
                if name is not None and line.rstrip().split(" ", 1)[-1] == name:
                    named += 1
    except OSError:
        return 0, 0
