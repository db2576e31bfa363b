# The runtime's door to updates (docs/ota.md 4): it routes offers and
# chunks, says at each connect how the last update ended, and tells the hello
# which set runs. What an update does is loaded only while one is under way:
# pb/ota/session.py (resuming at boot, an offer, the download beside the
# features), pb/ota/handover.py (to update mode when RAM is short), pb/ota/trial.py (the trial of a
# new set), pb/ota/report.py (statuses).
from ..compat import const, forget

_TRIAL_S = const(60)
# Loaded for an update session; let go again when none runs after the boot
# (tests/firmware/test_module_lists.py checks these names)
SESSION_MODULES = ("pb.ota.session", "pb.ota.handover", "pb.ota.flash", "loader", "pb.ota.report")


class Boot:
    """What the boot loader decided (firmware/loader.py): `root` is the feature
    folder to run (None: safe mode), `pointer` the pointer record (None:
    factory set), `trial` whether this boot is a trial (`report`, the status
    the loader had to give, went to flash: it is not kept here), `trusted`
    the version of the root the device trusts (0: none; pb/ota/roots.py)."""

    def __init__(self, root, pointer=None, trial=False, report=None, trusted=0):
        self.root = root
        self.pointer = pointer
        self.trial = trial
        self.trusted = trusted

    def counter(self):
        return self.pointer["counter"] if self.pointer else 0

    def manifest(self):
        return self.pointer.get("manifest") if self.pointer else None


class Updates:
    def __init__(self, device, boot):
        self.dev = device
        self.boot = boot
        self.agent = None  # the download agent (pb/ota/download.py), once needed
        self.running = False  # its loop runs
        self.said = None  # the last kept status (bytes), said at every connect
        self.keep_to = None  # where it is kept (pb/ota/flash.py LAST_STATUS)
        self.commit_to = None  # a trial's commit, prepared (pb/ota/flash.py commit_of)
        self.offer_to = None  # where an offer goes to update mode (pb/ota/flash.py OFFER)
        self.held = None  # the offer that waits for the features to be idle (pb/ota/handover.py hold)
        self.trial_s = device.config.get("ota_trial_s", _TRIAL_S)

    def start(self):
        """At boot: send what the boot loader reported, resume a download a
        reset interrupted, and begin the trial of a new set."""
        from .session import start

        start(self)
        self.idle()

    def idle(self):
        """Let the update's modules go if no download runs."""
        if self.agent is None:
            forget(SESSION_MODULES)

    def on_message(self, kind, payload, retain):
        if kind == "ota/chunk":
            if self.agent is not None:
                self.agent.on_chunk(payload)
        elif kind == "ota/offer" and not retain:
            try:
                self._offer(payload)
            except MemoryError:
                if self.agent is not None or self.boot.trial:
                    raise
                # a heap too fragmented even for the code that weighs an offer (a crash
                # would lose it): it goes along on flash to update mode, on an empty heap,
                # as pb/ota/handover.py to_update_mode sends it
                self.dev.spare(True)
                from ..store import write_atomic

                write_atomic(self.offer_to, payload)
                self.dev.stop("update")
        elif not retain and (kind == "ota/root" or kind == "ota/time"):
            from .handover import take

            take(self, kind, payload)

    def _offer(self, payload):
        if self.agent is None and not self.boot.trial:
            from .handover import roomy, to_update_mode

            if not roomy(self):
                why = self.dev.features.busy(self.dev.actuators)
                if why is not None:
                    from .handover import hold  # (if it asks to wait while one is busy)

                    try:
                        hold(self, payload, why)
                        return
                    except MemoryError:
                        pass  # (then as if it did not ask)
                to_update_mode(self, payload)
                return
        from .session import offer

        offer(self, payload)

    def status(self, msg):
        """Send an update status (pb/ota/report.py); an outcome is kept."""
        from .report import send_status

        d = self.dev
        data = send_status(d.client, d.id, msg, d.now(), self.keep_to)
        if data is not None:
            self.said = data
        if msg["state"] not in ("downloading", "offered"):
            d.log("update %s: %s %s" % (msg.get("id"), msg["state"], msg.get("reason") or ""))

    def birth(self):
        """The last outcome of an update, said again at every connect."""
        data = self.said
        return [(self.dev.topic("ota/status"), data, 1, True)] if data else []

    def info(self):
        """What the hello says of the running set."""
        b = self.boot
        if b.root is None:
            state = "safe_mode"
        elif b.pointer is None or b.pointer.get("set") == "features":
            # (a rollback to the factory set points at its folder: pb/ota/flash.py FACTORY)
            state = "factory"
        else:
            state = "trial" if b.trial else "committed"
        return {"counter": b.counter(), "manifest": b.manifest(), "state": state, "root": b.trusted}

    def feature_failed(self, name, reason):
        """A feature raised: during a trial that is reason enough to go back."""
        if self.boot.trial:
            from .trial import rollback

            rollback(self, "feature %s failed: %s" % (name, reason))
