# An update in the runtime (docs/ota.md 4.2): at boot, the statuses the boot
# kept, a download a reset interrupted and the trial of a new set; an
# offer taken by the download agent beside the features (pb/ota/handover.py
# hands it to update mode instead when RAM is short). Loaded by
# pb/ota/updates.py while an update is under way, let go when none is.
import json

from ..store import read_bytes
from . import flash
from .report import status


def start(u):
    d = u.dev
    u.keep_to = d.base + "/" + flash.LAST_STATUS
    u.offer_to = d.base + "/" + flash.OFFER
    u.said = read_bytes(u.keep_to)
    for st in flash.take_reports(d.base):
        u.status(st)
    p = u.boot.pointer
    if p and p.get("update") and not u.boot.trial:
        _committed_unsaid(u)
    if flash.read_job(d.base) is not None:
        # the download may be what broke it: after a crash, update mode
        from .handover import roomy, to_update_mode

        if d.reset_cause == "crash" or not roomy(u):
            to_update_mode(u)
            return
        agent = _agent(u)
        if agent.job is not None:
            _run(u, agent)
    if u.boot.trial:
        from .trial import run

        u.commit_to = flash.commit_of(d.base, p)
        u.status(status(p.get("update") or "-", "trial", p["counter"]))
        d.spawn(run(u))


def _committed_unsaid(u):
    """The power went between the commit and its report: say it now."""
    p = u.boot.pointer
    try:
        last = json.loads(u.said) if u.said else None
    except ValueError:
        last = None
    if last and last.get("id") == p["update"] and last.get("state") in ("activating", "trial"):
        u.status(status(p["update"], "committed", p["counter"]))


def offer(u, payload):
    """An offer (or a cancel) from the gateway, for the agent (RAM allowing:
    pb/ota/updates.py checks)."""
    busy = None
    if u.boot.trial:
        # the set on trial may be this very update, offered again by a
        # gateway that restarted before its statuses came in: taken already
        try:
            if json.loads(bytes(payload)).get("id") == u.boot.pointer.get("update"):
                return
        except (ValueError, AttributeError):
            pass
        busy = "a trial is in progress"
    agent = _agent(u)
    agent.on_offer(payload, busy)
    if agent.job is not None:
        _run(u, agent)


def _run(u, agent):
    if not u.running:
        u.running = True
        u.dev.spawn(agent.run())


def _agent(u):
    if u.agent is None:
        d = u.dev
        d.spare(True, True)  # for good: a download needs it all
        from .download import Agent, configure
        from .transfer import send_request

        b = u.boot
        client = d.client
        dev = d.id
        u.agent = Agent(
            d.base,
            d.config["model"],
            b.counter(),
            lambda msg: send_request(client, dev, msg),
            u.status,
            d.now,
            lambda: client.up,
            d.hal.fault_point,
        )
        configure(u.agent, d.config, d.hal)
        u.agent.tick = d.hal.feed_watchdog
        u.agent.on_reset = lambda: d.stop("update")
        u.agent.busy = lambda: d.features.busy(d.actuators)
    return u.agent
