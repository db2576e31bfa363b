# An update held back while the board's battery is low (docs/ota.md 4.3):
# the agent (pb/ota/download.py) awaits charged() before it starts or
# resumes a download and before it stages one. Loaded only on a board with
# a battery, and let go after.
from ..compat import const, sleep_ms
from ..errors import HalError

_HYSTERESIS = const(5)  # % above the threshold at which a deferred update goes on
_POLL_MS = const(2000)
_SAVE_S = const(60)  # how often the time waited is written to the job


def _charge(agent):
    # None: a reading that failed, which must not hold updates back for ever
    try:
        return agent.battery()
    except HalError:
        return None


async def charged(agent, job):
    """Return once the battery may carry the update. Below the agent's
    battery_min it reports deferred, keeps the job and what is staged, and
    waits until the charge is _HYSTERESIS points above it (or cannot be
    read); the time waited goes to the job's `paused`, which the deadline
    leaves out. A cancel or a new offer ends the wait (Failed)."""
    low = agent.battery_min
    pct = _charge(agent)
    if pct is None or pct >= low:
        return
    uid = job["id"]
    agent.report(
        "deferred", uid, counter=job["counter"], reason="battery: %d%% is below %d%%" % (int(pct), low)
    )
    paused = job.get("paused", 0)
    t0 = saved = agent.now()
    while pct is not None and pct < min(low + _HYSTERESIS, 100):
        await sleep_ms(_POLL_MS)
        agent.check_cancel(uid)
        pct = _charge(agent)
        now = agent.now()
        job["paused"] = paused + now - t0
        if now - saved >= _SAVE_S:
            saved = now
            agent.save_job()
    agent.save_job()
