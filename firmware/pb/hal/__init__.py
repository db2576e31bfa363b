# The hardware abstraction: what the runtime and features may ask of a board.
# Backends: esp32 (the real board), host (a plain file the simulator or a test
# drives), and the simulator's physics backend, all behind this one interface.
from ..errors import HalError

SENSOR = "sensor"
RELAY = "relay"
SERVO = "servo"
ACTUATORS = (RELAY, SERVO)

RESET_CAUSES = ("power_on", "hard", "soft", "watchdog", "deepsleep", "crash", "unknown")


class Reboot(Exception):
    """Raised by a host backend's reset(): the boot loop starts the runtime
    again in the same process, as a soft reset does on the board."""

    def __init__(self, cause):
        super().__init__(cause)
        self.cause = cause


class Hal:
    """Base of every backend. `board` is the parsed board file: its
    'capabilities' map names to {'kind': sensor|relay|servo, ...}, and its
    'addons' the parts that may be plugged into it, each a capability with
    where it answers (docs/protocol.md 13). `caps` is what the board has
    now: its own and the add-ons plugged in (pb/addons.py)."""

    name = "base"

    def __init__(self, board, root=".", path=None):
        board.pop("streams", None)  # (what each stream tells, for owners: the gateway's, not RAM's)
        addons = board.pop("addons", None) or {}
        self.board = board
        self.root = root
        # each add-on: (a sensor?, scl, sda, addr), where a bus scan finds it;
        # its capability is read from the board file (path) once it is
        # plugged in: the table would take kilobytes of a board's RAM
        self.addons = {}
        for n in addons:
            a = addons[n]
            self.addons[n] = (a.get("kind") == SENSOR, a.get("scl"), a.get("sda"), a.get("addr"))
        self.path = path
        self.specs = None if path else addons  # (no file: a simulator's, which keeps them)
        self.plugged = ()  # the add-ons plugged in, sorted names
        self.caps = board.get("capabilities", {})

    def sensors(self):
        return [n for n in sorted(self.caps) if self.caps[n].get("kind") == SENSOR]

    def actuators(self):
        return [n for n in sorted(self.caps) if self.caps[n].get("kind") in ACTUATORS]

    def check_value(self, name, value):
        """Validate an actuator command against its capability; returns the
        value normalised (bool for a relay, 0-100 for a servo)."""
        cap = self.caps.get(name)
        if cap is None:
            raise HalError("no capability %r on this board" % name)
        kind = cap.get("kind")
        if kind == RELAY:
            if not isinstance(value, bool):
                raise HalError("relay %s takes true or false" % name)
            return value
        if kind == SERVO:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise HalError("servo %s takes a number 0-100" % name)
            if not 0 <= value <= 100:
                raise HalError("servo %s: %r is outside 0-100" % (name, value))
            return value
        raise HalError("%s is not an actuator" % name)

    def check_reading(self, name, value):
        """A sensor value inside its physical range, or HalError."""
        cap = self.caps.get(name, {})
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise HalError("sensor %s gave %r" % (name, value))
        lo = cap.get("min")
        hi = cap.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise HalError("sensor %s reads %r, outside %r..%r" % (name, value, lo, hi))
        return value

    def safe_state(self):
        """Drive every actuator to its 'safe' value (relay off, vent neutral)."""
        for name in self.actuators():
            cap = self.caps[name]
            safe = cap.get("safe", False if cap.get("kind") == RELAY else 0)
            try:
                self.write(name, safe)
            except HalError:
                pass

    # ---- what each backend provides --------------------------------------

    def scan(self):
        """The names of the add-ons plugged in now, or None when the backend
        cannot tell this time (keep what was found before)."""
        return ()

    def read(self, name):
        """Current value of a sensor. Raises HalError."""
        raise HalError("%s backend cannot read %s" % (self.name, name))

    def write(self, name, value):
        """Drive an actuator. Raises HalError."""
        raise HalError("%s backend cannot drive %s" % (self.name, name))

    offset = 0  # seconds a host's clock is set off the host's (pb/hal/host.py CLOCK_FILE)

    def time(self):
        """Wall-clock time, seconds since the Unix epoch."""
        import time

        t = time.time()
        # MicroPython on a board counts from 2000-01-01
        return (t + 946684800 if t < 946684800 else t) + self.offset

    def reset_cause(self):
        return "unknown"

    def reset(self, cause="soft"):
        """Restart the device; does not return."""
        raise Reboot(cause)

    async def network_up(self, config):
        """Bring the network link up (Wi-Fi on a board). Raises HalError."""
        return None

    def feed_watchdog(self):
        return None

    def set_repl(self, is_open):
        """Open or close the REPL on the board's USB port until its next
        reset (config.json "repl": "closed" closes it at every boot; the
        command repl.open opens it). A host's has nothing to close."""
        return None

    def partition(self):
        """The esp32.Partition class of the board's OTA app partitions (the
        MicroPython image's two slots), or None if its image cannot be
        updated (docs/ota.md 4.11)."""
        return None

    def image_valid(self):
        """The running image is good: esp32.Partition's
        mark_app_valid_cancel_rollback (no rollback at the next reset)."""
        self.partition().mark_app_valid_cancel_rollback()

    def fault_point(self, name):
        """A point where a test may cut the power (the host backend's
        hal/faults.json); nothing happens on a board."""
        return None
