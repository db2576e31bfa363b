# An update held back (docs/ota.md 4.3): while the board's battery is low,
# the agent (pb/ota/download.py) awaits charged() before it starts or
# resumes a download and before it stages one; while a feature is busy (its
# manifest's `busy`), it awaits idle() before it stages one, since the
# install resets the board. Loaded only where it is needed, and let go after.
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


def _below(agent, high):
    pct = _charge(agent)
    return pct is not None and pct < high


async def charged(agent, job):
    """Return once the battery may carry the update. Below the agent's
    battery_min it reports deferred, keeps the job and what is staged, and
    waits until the charge is _HYSTERESIS points above it (or cannot be
    read). A cancel or a new offer ends the wait (Failed)."""
    low = agent.battery_min
    pct = _charge(agent)
    if pct is None or pct >= low:
        return
    why = "battery: %d%% is below %d%%" % (int(pct), low)
    high = min(low + _HYSTERESIS, 100)
    await _wait(agent, job, why, lambda: _below(agent, high))


async def idle(agent, job):
    """Return once no feature is busy (agent.busy() is None), or after
    agent.busy_max_s of waiting (a feature busy that long is not in a cycle
    any more); while one is, as charged() does while the battery is low."""
    why = agent.busy()
    if why is not None:
        until = agent.now() + agent.busy_max_s
        await _wait(agent, job, why, lambda: agent.busy() is not None and agent.now() < until)


async def _wait(agent, job, why, holding):
    """Report deferred (why), then look every _POLL_MS until holding() is
    false; the time waited goes to the job's `paused`, which the deadline
    leaves out (written every _SAVE_S, and at the end)."""
    uid = job["id"]
    agent.report("deferred", uid, counter=job["counter"], reason=why)
    agent.held = why  # (while it waits: the simulator's fleet counts it apart; no default in
    # pb/ota/download.py, whose every name takes update mode's RAM)
    paused = job.get("paused", 0)
    t0 = saved = agent.now()
    try:
        while True:
            await sleep_ms(_POLL_MS)
            agent.check_cancel(uid)
            still = holding()
            now = agent.now()
            job["paused"] = paused + now - t0
            if not still:
                break
            if now - saved >= _SAVE_S:
                saved = now
                agent.save_job()
    finally:
        agent.held = None
    agent.save_job()
