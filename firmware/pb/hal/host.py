# Host backend: the board's sensors are values in a JSON file that a test or
# the simulator writes (hal/sensors.json), and its actuators are values the
# runtime writes to another (hal/actuators.json). Runs on the MicroPython unix
# port and on CPython.
import json

from ..errors import HalError
from ..store import makedirs, read_bytes, write_atomic
from . import RESET_CAUSES, Hal

SENSORS_FILE = "sensors.json"
ACTUATORS_FILE = "actuators.json"
# Power-cut injection for tests: {"crash_at": N, "log": true} makes the Nth
# fault point kill the device with SIGKILL; "log" lists the points passed in
# fault_points.log, one line each, numbered across resets (the device's
# processes continue the count the log holds). The file exists only where a
# test put it.
FAULTS_FILE = "faults.json"
FAULT_LOG = "fault_points.log"


class HostHal(Hal):
    name = "host"

    def __init__(self, board, root="."):
        super().__init__(board, root)
        self.dir = root + "/hal"
        makedirs(self.dir)
        self._out = {}
        if _fault[0] is None:
            _fault[0] = _load_faults(self.dir)
        data = read_bytes(self.dir + "/" + ACTUATORS_FILE)
        if data:
            try:
                self._out = json.loads(data)
            except ValueError:
                self._out = {}

    def _sensors(self):
        data = read_bytes(self.dir + "/" + SENSORS_FILE)
        if data is None:
            raise HalError("no sensor values yet (%s/%s)" % (self.dir, SENSORS_FILE))
        try:
            values = json.loads(data)
        except ValueError as exc:
            raise HalError("sensor file is not JSON: %s" % exc) from None
        if not isinstance(values, dict):
            raise HalError("sensor file is not a JSON object")
        return values

    def read(self, name):
        if self.caps.get(name, {}).get("kind") != "sensor":
            raise HalError("no sensor %r on this board" % name)
        values = self._sensors()
        if name not in values:
            raise HalError("sensor %s has no value" % name)
        return self.check_reading(name, values[name])

    def write(self, name, value):
        value = self.check_value(name, value)
        if self._out.get(name) == value and name in self._out:
            return
        self._out[name] = value
        write_atomic(self.dir + "/" + ACTUATORS_FILE, json.dumps(self._out).encode("utf-8"))

    def reset_cause(self):
        # what a board's reset cause register says: main.py sets PB_RESET
        # when it starts the device again after a reset ("hard": the device
        # reset itself, "watchdog": it crashed); a process started afresh
        # is a board that was powered on. Resets with a cause of their own
        # (a reboot command, a runtime crash) are in the state store.
        import os

        cause = os.getenv("PB_RESET")
        return cause if cause in RESET_CAUSES else "power_on"

    def fault_point(self, name):
        plan = _fault[0]
        if not plan:
            return
        if _fault[1] == 0 and plan.get("log"):
            data = read_bytes(self.dir + "/" + FAULT_LOG)
            _fault[1] = data.count(b"\n") if data else 0
        _fault[1] += 1
        n = _fault[1]
        if plan.get("log"):
            with open(self.dir + "/" + FAULT_LOG, "a") as f:
                f.write("%d %s\n" % (n, name))
        if n == plan.get("crash_at"):
            _kill_self()


# [plan, points passed]: once per process, so soft resets keep counting
_fault = [None, 0]  # type: list


def _load_faults(folder):
    data = read_bytes(folder + "/" + FAULTS_FILE)
    if not data:
        return {}
    try:
        plan = json.loads(data)
    except ValueError:
        return {}
    return plan if isinstance(plan, dict) else {}


def _kill_self():
    """SIGKILL this process: a power cut, with no cleanup of any kind."""
    import os

    if hasattr(os, "kill"):
        os.kill(os.getpid(), 9)
    os.system("kill -9 $PPID")  # MicroPython's unix port: the shell's parent is us
