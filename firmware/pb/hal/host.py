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
FAULTS_FILE = "faults.json"  # a test's power-cut plan (pb/hal/power_cuts.py)
CLOCK_FILE = "clock"  # the device's clock minus the host's, whole seconds as text


class HostHal(Hal):
    name = "host"

    def __init__(self, board, root=".", path=None):
        super().__init__(board, root, path)
        self.dir = root + "/hal"
        makedirs(self.dir)
        self._out = {}
        self._cuts = False  # a test's power cuts planned
        if read_bytes(self.dir + "/" + FAULTS_FILE) is not None:
            from .power_cuts import load

            self._cuts = load(self.dir + "/" + FAULTS_FILE)
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

    def scan(self):
        # an add-on is plugged in while the sensor file names it (a value
        # for a sensor, anything for an actuator's driver)
        try:
            values = self._sensors()
        except HalError:
            return None
        return [n for n in self.addons if n in values]

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

    def set_time(self, t):
        """Set the clock to Unix time t: the host's clock stays, the offset
        from it is kept on flash, as a board's real-time clock keeps its
        time (CLOCK_FILE, read back at boot by pb/prepare.py)."""
        self.offset = 0
        self.offset = int(t - self.time())  # (whole seconds: a small int takes no heap)
        write_atomic(self.dir + "/" + CLOCK_FILE, str(self.offset).encode())

    def reset_cause(self):
        # what a board's reset cause register says: main.py sets PB_RESET
        # when it starts the device again after a reset ("hard": the device
        # reset itself, "watchdog": it crashed); a process started afresh
        # is a board that was powered on. Resets with a cause of their own
        # (a reboot command, a runtime crash) are in the state store.
        import os

        cause = os.getenv("PB_RESET")
        return cause if cause in RESET_CAUSES else "power_on"

    def partition(self):
        from .host_image import partition

        return partition(self.root)

    def image_valid(self):
        from .host_image import image_valid

        image_valid(self.root)

    def fault_point(self, name):
        if self._cuts:
            from .power_cuts import passed

            passed(self.dir, name)
