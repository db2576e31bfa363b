# The runtime's side of updates: routes offers and chunks to the download
# agent (imported only when an update is under way: it costs RAM), carries
# its requests and statuses over MQTT, resets when an update is staged (the
# boot guard installs it), and runs the trial of a newly activated set:
# commit when healthy, roll back when not.
import json

from .compat import forget, mem_free
from .errors import StoreError
from .store import exists, read_bytes, write_atomic

_TRIAL_S = 60
# RAM a download needs beside the running features (its modules are already
# loaded when this is checked); less free, and it runs in update mode
_OTA_RAM = 48000
OFFER = "ota/offer.json"  # an offer handed to update mode
LAST_STATUS = "ota/status.json"
_KEPT = ("trial", "committed", "rolled_back", "failed")
REPORTS = "ota/reports.json"


def keep_status(base, state, data):
    """An outcome is said again at every connect, until a later one replaces
    it: a reset right after must not leave the gateway without it."""
    if state in _KEPT:
        try:
            write_atomic(base + "/" + LAST_STATUS, data.encode("utf-8"))
        except StoreError:
            pass  # a full flash: said now, if not again


def take_reports(base):
    """The statuses the boot guard kept on flash, oldest first; they go."""
    import os

    path = base + "/" + REPORTS
    data = read_bytes(path)
    for p in (path, path + ".tmp"):
        try:
            os.remove(p)
        except OSError:
            pass
    try:
        reports = json.loads(data) if data else []
    except ValueError:
        return []
    return reports if isinstance(reports, list) else []


class Updates:
    def __init__(self, device, boot):
        self.dev = device
        self.boot = boot
        self.agent = None
        self.trial_s = device.config.get("ota_trial_s", _TRIAL_S)
        self._running = False

    # ---- starting ----------------------------------------------------------

    def start(self):
        """At boot: send what the boot guard reported, resume a download a
        reset interrupted, and begin the trial of a new set."""
        d = self.dev
        for st in take_reports(d.base):
            self.status(st)
        p = self.boot.pointer
        if p and p.get("update") and not self.boot.trial:
            from .trial import committed_unsaid

            committed_unsaid(self)
            forget(("pb.trial",))
        if exists(d.base + "/ota/job.json"):
            # the download may be what broke it: after a crash, update mode
            if d.reset_cause == "crash" or not self._roomy():
                self._to_update_mode()
                return
            agent = self._agent()
            if agent.job is not None:
                self._running = True
                d.spawn(agent.run())
        if self.boot.trial:
            p = self.boot.pointer
            self.status({"v": 1, "id": p.get("update") or "-", "state": "trial", "counter": p["counter"]})
            from .trial import run

            d.spawn(run(self))

    def _agent(self):
        if self.agent is None:
            self.dev.spare(True, True)  # for good: a download needs it all
            from .ota import Agent, configure

            d = self.dev
            b = self.boot
            self.agent = Agent(
                d.base,
                d.config["model"],
                b.counter(),
                lambda: _held(b.root),
                self.request,
                self.status,
                d.now,
                lambda: d.client.up,
                d.hal.fault_point,
            )
            configure(self.agent, d.config, d.hal.caps)
            self.agent.tick = d.hal.feed_watchdog
            self.agent.on_staged = lambda: d.stop("update")
        return self.agent

    def _roomy(self):
        """True if a download fits in RAM beside the features (config
        "ota_mode": "lean" sends every download to update mode)."""
        cfg = self.dev.config
        if cfg.get("ota_mode") == "lean":
            return False
        free = mem_free()
        if free >= 0 and self.dev._reserve:
            free += len(self.dev._reserve)  # given back to a download
        return free < 0 or free >= cfg.get("ota_ram", _OTA_RAM)

    def _to_update_mode(self, offer=None):
        """Reset into update mode (pb/updatemode.py), where only the link and
        the download run; an offer not yet taken goes along on flash."""
        d = self.dev
        if offer is not None:
            d.spare(True)  # a reset follows: what is kept for a bad day is for now
            write_atomic(d.base + "/" + OFFER, offer)  # (no copy: RAM is short)
        else:
            data = read_bytes(d.base + "/ota/job.json")
            job = json.loads(data)
            job["mode"] = "lean"
            write_atomic(d.base + "/ota/job.json", json.dumps(job).encode("utf-8"))
        d.log("update: %d bytes of RAM free: downloading in update mode" % mem_free())
        d.stop("update")

    # ---- messages ----------------------------------------------------------

    def on_message(self, kind, payload, retain):
        if kind == "ota/chunk":
            if self.agent is not None:
                self.agent.on_chunk(payload)
        elif kind == "ota/offer" and not retain:
            busy = "a trial is in progress" if self.boot.trial else None
            if self.agent is None and not busy and not self._roomy():
                self._to_update_mode(payload)
                return
            agent = self._agent()
            agent.on_offer(payload, busy)
            if agent.job is not None and not self._running:
                self._running = True
                d = self.dev
                d.spawn(agent.run())

    def request(self, uid, obj, off, length, seq):
        """The agent's transport: ask the gateway for bytes."""
        d = self.dev
        msg = {"v": 1, "dev": d.id, "id": uid, "obj": obj, "off": off, "len": length, "seq": seq}
        d.client.publish(d.topic("ota/req"), json.dumps(msg), 0, False)

    def status(self, msg):
        d = self.dev
        msg["dev"] = d.id
        if "ts" not in msg:
            msg["ts"] = d.now()
        data = json.dumps(msg)
        keep_status(d.base, msg["state"], data)
        d.client.publish(d.topic("ota/status"), data, 1, True)
        if msg["state"] not in ("downloading", "offered"):
            d.log("update %s: %s %s" % (msg.get("id"), msg["state"], msg.get("reason") or ""))

    def birth(self):
        """The last outcome of an update, said again at every connect."""
        data = read_bytes(self.dev.base + "/" + LAST_STATUS)
        return [(self.dev.topic("ota/status"), data, 1, True)] if data else []

    def info(self):
        """What the hello says of the running set."""
        b = self.boot
        if b.root is None:
            state = "safe_mode"
        elif b.pointer is None:
            state = "factory"
        else:
            state = "trial" if b.trial else "committed"
        return {"counter": b.counter(), "manifest": b.manifest(), "state": state}

    # ---- the trial ---------------------------------------------------------

    def feature_failed(self, name, reason):
        """A feature raised: during a trial that is reason enough to go back."""
        if self.boot.trial:
            from .trial import rollback

            rollback(self, "feature %s failed: %s" % (name, reason))


def _held(root):
    from .otafs import held_files

    return held_files(root)
