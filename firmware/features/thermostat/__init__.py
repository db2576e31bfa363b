# Thermostat: heater relay with hysteresis around a setpoint that a daily
# schedule may change. On below setpoint - hysteresis, off above
# setpoint + hysteresis, unchanged in between (so the relay does not chatter).
# Other features may shift the setpoint within +-MAX_OFFSET by the signal
# 'setpoint_offset' (eco pre-heats while energy is cheap), and switch the
# heater on earlier by the signal 'lead' (weather, in the cold: up to
# MAX_LEAD, and never so far that the band closes).

MAX_OFFSET = 3.0
MAX_LEAD = 1.0


def parse_schedule(entries):
    """[["HH:MM", setpoint], ...] -> sorted [(minute_of_day, setpoint)].
    Raises ValueError for a malformed entry."""
    out = []
    for e in entries:
        if not isinstance(e, list) or len(e) != 2 or not isinstance(e[0], str):
            raise ValueError('schedule entry %r is not ["HH:MM", setpoint]' % (e,))
        parts = e[0].split(":")
        if len(parts) != 2:
            raise ValueError("schedule time %r is not HH:MM" % e[0])
        h = int(parts[0])
        m = int(parts[1])
        sp = e[1]
        if not (0 <= h < 24 and 0 <= m < 60) or isinstance(sp, bool) or not isinstance(sp, (int, float)):
            raise ValueError("schedule entry %r is out of range" % (e,))
        out.append((h * 60 + m, sp))
    out.sort()
    return out


def check_config(cfg):
    """Refuse a schedule the thermostat could not follow. Raises ValueError."""
    parse_schedule(cfg["schedule"])


def scheduled(schedule, minute, default):
    """Setpoint in force at minute of day: the last entry at or before it,
    else the previous day's last entry, else default."""
    if not schedule:
        return default
    sp = schedule[-1][1]
    for at, value in schedule:
        if at <= minute:
            sp = value
    return sp


class Thermostat:
    def __init__(self, ctx):
        self.ctx = ctx
        self.heating = False
        self.offset = 0  # type: float
        self.lead = 0  # type: float
        self.schedule = parse_schedule(ctx.config["schedule"])
        ctx.drive("relay", False)
        ctx.on("sensor.temperature", self.on_temperature)
        ctx.on("signal.setpoint_offset", self.on_offset)
        ctx.on("signal.lead", self.on_lead)

    def setpoint(self):
        base = scheduled(self.schedule, self.ctx.minute_of_day(), self.ctx.config["setpoint"])
        return base + self.offset

    def on_offset(self, value):
        self._shift("offset", value, -MAX_OFFSET, MAX_OFFSET)

    def on_lead(self, value):
        self._shift("lead", value, 0, MAX_LEAD)

    def _shift(self, name, value, lo, hi):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        setattr(self, name, max(lo, min(hi, value)))
        t = self.ctx.read("temperature")
        if t is not None:
            self.on_temperature(t)

    def on_temperature(self, t):
        cfg = self.ctx.config
        sp = self.setpoint()
        h = cfg["hysteresis"]
        lead = min(self.lead, 1.5 * h)  # (on stays below off: the relay does not chatter)
        if cfg["mode"] == "off":
            on = False
        elif t < sp - h + lead:
            on = True
        elif t > sp + h:
            on = False
        else:
            on = self.heating
        if on != self.heating:
            self.heating = on
            self.ctx.drive("relay", on)
        self.ctx.report({"setpoint": sp, "heating": on, "mode": cfg["mode"], "offset": self.offset})

    def on_config(self, key, value):
        if key == "schedule":
            self.schedule = parse_schedule(value)
        t = self.ctx.read("temperature")
        if t is not None:
            self.on_temperature(t)

    def selftest(self):
        parse_schedule(self.ctx.config["schedule"])
        return 5 <= self.setpoint() - self.offset <= 30

    def stop(self):
        self.ctx.drive("relay", False)


def start(ctx):
    return Thermostat(ctx)
