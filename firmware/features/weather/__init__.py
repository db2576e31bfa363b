# Weather: anticipates the heat the room loses to the outdoors. The colder it
# is outside, the faster the room cools, and the further it falls below the
# thermostat's band while the radiator warms up after the heater went on.
# From the outdoor probe (an add-on) this feature asks the thermostat, by
# the signal 'lead', to switch the heater on that much earlier:
# lead = gain * (room - outdoors), within 0..max_lead degrees. It never
# drives the heater itself.


def lead_for(room, outdoor, gain, max_lead):
    """Degrees to switch on early; 0 without both temperatures."""
    if room is None or outdoor is None:
        return 0
    return max(0, min(max_lead, gain * (room - outdoor)))


class Weather:
    def __init__(self, ctx):
        self.ctx = ctx
        self.lead = None
        ctx.on("sensor.outdoor_temperature", self.on_outdoor)

    def on_outdoor(self, outdoor):
        cfg = self.ctx.config
        lead = lead_for(self.ctx.read("temperature"), outdoor, cfg["gain"], cfg["max_lead"])
        lead = int(lead * 100 + 0.5) / 100  # (a signal when it moves by 0.01 C, not every reading)
        if lead != self.lead:
            self.lead = lead
            self.ctx.signal("lead", lead)
        self.ctx.report({"lead": lead})

    def on_config(self, key, value):
        self.lead = None
        t = self.ctx.read("outdoor_temperature")
        if t is not None:
            self.on_outdoor(t)

    def selftest(self):
        return lead_for(20, 0, 0.01, 1) == 0.2 and lead_for(20, 30, 0.01, 1) == 0

    def stop(self):
        self.ctx.signal("lead", 0)


def start(ctx):
    return Weather(ctx)
