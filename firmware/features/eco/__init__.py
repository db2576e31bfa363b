# Eco: pre-heat while energy is cheap. The gateway sends the day's hourly
# prices (data 'prices': 24 numbers, local hours 0-23); in the cheapest
# `cheap_hours` of them this feature asks the thermostat, by the signal
# 'setpoint_offset', for up to `band` degrees more, and for nothing extra in
# the others. It never drives the heater itself.


def boost_for(prices, hour, cheap_hours, band):
    """(boost, price, cheap) for an hour of the day; no boost without prices."""
    if not _valid(prices):
        return 0, None, False
    price = prices[hour % 24]
    if cheap_hours <= 0:
        return 0, price, False
    ranked = sorted(prices)
    threshold = ranked[min(cheap_hours, 24) - 1]
    cheap = price <= threshold
    return (band if cheap else 0), price, cheap


def _valid(prices):
    if not isinstance(prices, list) or len(prices) != 24:
        return False
    for p in prices:
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            return False
    return True


class Eco:
    def __init__(self, ctx):
        self.ctx = ctx
        self.boost = None
        ctx.on("tick", self.on_tick)
        ctx.on("data.prices", self.on_prices)

    def on_prices(self, prices):
        self.boost = None  # re-evaluate at once
        self.on_tick(self.ctx.now())

    def on_tick(self, now):
        cfg = self.ctx.config
        hour = self.ctx.minute_of_day() // 60
        boost, price, cheap = boost_for(self.ctx.data("prices"), hour, cfg["cheap_hours"], cfg["band"])
        if boost != self.boost:
            self.boost = boost
            self.ctx.signal("setpoint_offset", boost)
        self.ctx.report({"boost": boost, "price": price, "cheap": cheap})

    def on_config(self, key, value):
        self.boost = None
        self.on_tick(self.ctx.now())

    def selftest(self):
        return boost_for([1] * 24, 0, 1, 1.0)[0] == 1.0

    def stop(self):
        self.ctx.signal("setpoint_offset", 0)


def start(ctx):
    return Eco(ctx)
