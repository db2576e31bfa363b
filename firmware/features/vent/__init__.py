# Vent: humidity -> flap opening, with hysteresis. Closed until humidity
# reaches open_at; then open at least min_opening, more as humidity rises,
# following the curve in curve.py, fully open at full_at; closed again only
# once humidity falls below close_at. The flap turns back only for REVERSE
# percent or more: a reading at the edge between two steps would otherwise
# swing it back and forth every reading (servo wear and battery, for no
# change in the air under the shirt).
from .curve import POINTS

REVERSE = 2


def shape(x, points=POINTS):
    """The curve at x (0..1), linear between its points."""
    if x <= points[0][0]:
        return points[0][1]
    for i in range(1, len(points)):
        x1, y1 = points[i]
        if x <= x1:
            x0, y0 = points[i - 1]
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def opening(humidity, venting, cfg, points=POINTS):
    """(venting, opening percent) for a humidity reading."""
    if venting:
        venting = humidity >= cfg["close_at"]
    else:
        venting = humidity >= cfg["open_at"]
    if not venting:
        return False, 0
    lo = cfg["close_at"]
    x = (humidity - lo) / max(cfg["full_at"] - lo, 1)
    least = cfg["min_opening"]
    pct = least + (100 - least) * shape(max(0.0, min(1.0, x)), points)
    return True, int(max(least, min(100, pct)) + 0.5)


def moves(now, to, way):
    """Whether the flap at `now` goes to `to`, its last move `way` (the
    signed step it took): always to open from closed or to close, on in
    the way it last went, back only by REVERSE or more."""
    step = to - now
    if not step:
        return False
    return not now or not to or step * way > 0 or abs(step) >= REVERSE


def check_config(cfg):
    """Settings that are valid one by one but not together. Raises ValueError."""
    if not cfg["close_at"] < cfg["open_at"] <= cfg["full_at"]:
        raise ValueError("vent needs close_at < open_at <= full_at")


class Vent:
    def __init__(self, ctx):
        self.ctx = ctx
        self.venting = False
        self.opening = 0
        self.way = 0
        check_config(ctx.config)
        ctx.drive("vent", 0)
        ctx.on("sensor.humidity", self.on_humidity)

    def on_humidity(self, h):
        self.venting, pct = opening(h, self.venting, self.ctx.config)
        if moves(self.opening, pct, self.way):
            self.way = pct - self.opening
            self.opening = pct
            self.ctx.drive("vent", pct)
        self.ctx.report({"opening": self.opening, "venting": self.venting})

    def selftest(self):
        return self.ctx.config["close_at"] < self.ctx.config["open_at"]

    def stop(self):
        self.ctx.drive("vent", 0)


def start(ctx):
    return Vent(ctx)
