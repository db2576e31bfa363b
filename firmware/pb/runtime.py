# The device runtime: samples sensors onto the bus, runs the features,
# publishes birth, state and telemetry, answers the gateway's commands.
# The network is optional to the features: control loops keep running
# while the link is down.


from . import API
from .bus import Bus
from .compat import (
    MICROPYTHON,
    asyncio,
    const,
    forget,
    format_exception,
    rand_below,
    sleep_ms,
    ticks_add,
    ticks_diff,
    ticks_ms,
)
from .errors import HalError, ProtocolError, StoreError
from .features import FeatureHost, import_feature
from .net import wire
from .net.wire import MAX_PACKET

_RECENT_CMDS = const(8)


# Bytes kept whole for what loads on demand (see Device.spare)
_RESERVE = const(8192)
_RUNNING = const(16384)  # what the running device needs free besides
_RAM_WAIT = const(15000)  # ms a due hello or telemetry waits for RAM, connected, before a restart
# Loaded for some commands and let go after: most of the time none runs.
# (tests/firmware/test_module_lists.py checks these names)
COMMAND_MODULES = ("pb.commands", "pb.net.wire_in", "pb.configure", "pb.values", "pb.streams")
# What reads the feature manifests at boot, let go once the features run
STARTUP_MODULES = ("pb.startup",)


class Device:
    """One device: config (the provisioned config.json), a HAL backend and a
    Store. run() returns the reset cause when the device wants to restart."""

    def __init__(
        self,
        config,
        hal,
        store,
        features_root="features",
        importer=None,
        client=None,
        log=None,
        boot=None,
        base=".",
    ):
        from .ota.updates import Boot, Updates

        if boot is None:
            boot = Boot(features_root)
        self.config = config
        self.base = base
        self.api = API
        self._log = log
        self.id = config["device"]
        self.hal = hal
        self.store = store
        self.bus = Bus(self._feature_error)
        self.features = FeatureHost(self, store, boot.root, importer or import_feature)
        self.features.set_id = boot.manifest() or "factory"
        self.updates = Updates(self, boot)
        self.features.utc_offset_min = config.get("utc_offset_min", 0)
        self.actuators = {}
        self.sensor_errors = {}
        # what the owner keeps on the device (pb/streams.py apply): (withheld,
        # sensors, sensors off, actuators, {feature: fields}, {feature: fields
        # off}); None: nothing. Plain data: the code that made it is let go
        self.hide = None
        self.sample_ms = config.get("sample_ms", 1000)
        self.telemetry_ms = config.get("telemetry_ms", 10000)
        # the board looks for its add-ons every scan_ms (pb/addons.py)
        self._scan_every = max(1, config.get("scan_ms", 10000) // self.sample_ms)
        self._scan = self._scan_every
        b = config["broker"]
        self.keepalive = b.get("keepalive", 30)
        will = (
            self.topic("state"),
            wire.dumps("state", wire.state(self.id, "offline", reason="lost")),
            1,
            True,
        )
        if client is None and "link" in config:  # a line: serial or Bluetooth LE (docs/protocol.md 15-17)
            from .net.line import for_device

            client = for_device(config, hal, False)
        elif client is None:
            # (each link's code is loaded only when it is the one: a board keeps its RAM)
            from .net.mqtt_client import MQTTClient as kind

            ca = b.get("cafile")
            if ca:  # TLS
                from .net.tls import MQTTClient as kind

                ca = base + "/" + ca
            client = kind(
                self.id,
                b["host"],
                b.get("port", 1883),
                b.get("user"),
                b.get("password"),
                keepalive=self.keepalive,
                clean=b.get("clean", True),
                will=will,
                queue_size=b.get("queue", 32),
                max_packet=MAX_PACKET,
                ssl=ca,
            )
        self.client = client
        client.on_message = self._on_message
        client.birth = self._birth
        client.on_skipped = self._on_skipped
        self.state = {}
        self.reset_cause = "unknown"
        self._seq = 0
        self.recent = []  # [(cmd id, reply bytes)], newest last
        self._done = asyncio.Event()
        self._tasks = []
        self._crash = None
        self._reserve = None  # the block; False once given up for good
        self.hello_key = None  # digest of the hello last kept on flash (pb/hello.py)
        self._hello_due = None  # since when a hello could not be built: the sampler tries again
        self._short = None  # since when a sample or telemetry could not be built
        self._exit = None
        self.started = ticks_ms()

    def topic(self, kind):
        return wire.topic(self.id, kind)

    def now(self):
        return self.hal.time()

    def log(self, msg):
        if self._log is not None:
            self._log(self.id, msg)
        else:
            print("pb[%s]: %s" % (self.id, msg))

    # ---- lifecycle ---------------------------------------------------------

    def boot(self):
        """Count the boot, learn why we reset, start the features
        (pb/startup.py, let go after: its code runs once)."""
        from .startup import boot

        boot(self)
        forget(STARTUP_MODULES)

    async def run(self):
        """Run until stop() or a reboot command; returns the reset cause."""
        self.boot()
        self.spawn(self._link())
        link = self._tasks[0]
        self.spawn(self._sampler())
        self.updates.start()
        self.spare(False)
        await self._done.wait()
        # everything but the link stops first (a download must not report
        # after the goodbye); the link takes the goodbye out, then stops
        for t in self._tasks[1:]:
            t.cancel()
        await self._shutdown()
        link.cancel()
        if self._crash is not None:
            raise self._crash
        return self._exit

    def spare(self, use, for_good=False):
        """Give the RAM kept in reserve back to the heap (use=True), or take
        it again. Modules loaded on demand (a command's, an update's) need
        blocks of some size; between telemetry the heap of a small board is
        too fragmented to have them, so one whole block is kept for them.
        for_good: never taken again (a download needs it all)."""
        if not MICROPYTHON:
            return
        import gc

        if use:
            self._reserve = False if for_good or self._reserve is False else None
            gc.collect()
        elif self._reserve is None:
            gc.collect()
            size = self.config.get("ram_reserve", _RESERVE)
            if gc.mem_free() < size + _RUNNING:
                return  # the running device needs it more
            try:
                self._reserve = bytearray(size)
            except MemoryError:
                pass  # fragmented: taken again next time

    def reserved(self):
        """Bytes kept in reserve now (see spare)."""
        return len(self._reserve) if self._reserve else 0

    def spawn(self, coro):
        """Run coro in the background; if it fails, the device restarts (a
        task that died silently would leave a device that only seems alive)."""
        self._tasks.append(asyncio.create_task(self._guard(coro)))

    async def _guard(self, coro):
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised by run(), which resets the device
            if self._crash is None:
                self._crash = exc
            self.stop("crash")

    def halt(self):
        """Everything stops where it stands: no goodbye, nothing saved, the
        link dropped (the broker sends the last will). What a power cut
        leaves; the simulator cuts a virtual device's power with it."""
        for t in self._tasks:
            t.cancel()
        self.client.drop()

    def stop(self, cause="stop"):
        self._exit = cause
        self._done.set()

    async def _shutdown(self):
        self.features.stop_all()
        self.hal.safe_state()
        if self.client.up:
            self._publish("state", wire.state(self.id, "offline", self.now(), self._exit), 1, True)
            t0 = ticks_ms()
            while self.client.pending() and ticks_diff(ticks_ms(), t0) < 2000:
                await sleep_ms(5)  # (a PUBACK on a near broker comes in well under 1 ms)
        await self.client.close()

    async def _link(self):
        delay = 1000
        while True:
            try:
                await self.hal.network_up(self.config)
                break
            except HalError as exc:
                self.log("network: %s" % exc)
                await sleep_ms(delay // 2 + rand_below(delay // 2 + 1))
                delay = min(delay * 2, 60000)
        # a board's clock starts at 2000: its backend says `ntp` (a host
        # keeps its own, and asks only a server config.json names)
        if "ntp" in self.config or getattr(self.hal, "ntp", False):
            from .net.sntp import set_clock

            await set_clock(self)
        await self.client.run()

    # ---- sensing and telemetry ---------------------------------------------

    async def _sampler(self):
        # samples, and publishes telemetry when its period has passed: one
        # task for both, as a board has RAM for few. The first report comes
        # at a random point of the first period: devices that power on
        # together (after a power cut) must not report in one burst for ever
        last = ticks_add(ticks_ms(), -rand_below(self.telemetry_ms))
        while True:
            self.hal.feed_watchdog()
            self._scan -= 1
            if self._scan <= 0:
                self._scan = self._scan_every
                self.look_for_addons()
            self.sample()
            if self._hello_due is not None:
                self.republish_hello()
            if ticks_diff(ticks_ms(), last) >= self.telemetry_ms:
                last = ticks_ms()
                if self.client.up:
                    self.publish_telemetry()
            await sleep_ms(min(self.sample_ms, self.telemetry_ms))

    def sample(self):
        """Read every sensor once and hand the readings to the features."""
        got = []
        off = self.hide[2] if self.hide is not None else ()
        for name in self.hal.sensors():
            if name in off:
                continue  # the owner turned it off: not read at all
            try:
                v = self.hal.read(name)
            except MemoryError:
                # a heap too fragmented for a reading now: this sample ends
                # here (the features keep the last values), not the runtime
                self._short = self._no_ram(self._short)
                break
            except HalError as exc:
                n = self.sensor_errors.get(name, 0)
                self.sensor_errors[name] = n + 1
                # no value is better than a stale one: features and telemetry
                # see the sensor missing until it reads again
                self.features.readings.pop(name, None)
                if n == 0:
                    self.emit_event("sensor_error", None, str(exc))
                continue
            self.sensor_errors[name] = 0
            self.features.readings[name] = v
            got.append((name, v))
        for name, v in got:
            self.bus.emit("sensor." + name, v)
        self.bus.emit("tick", self.now())

    def look_for_addons(self):
        """Add-ons plugged in or out since the last look: the features that
        need them start or stop (pb/addons.py, loaded only then)."""
        try:
            found = self.hal.scan() if self.hal.addons else None
        except MemoryError:
            return  # (a heap too fragmented for a look now: the next one looks)
        if found is not None and tuple(sorted(found)) != self.hal.plugged:
            from .addons import changed

            changed(self, found)
            forget(("pb.addons",))

    def shared(self):
        """(sensors, actuators, feature reports) as they may leave the
        device: without the streams its owner keeps on it."""
        h = self.hide
        if h is None:
            return self.features.readings, self.actuators, self.features.reports
        fields = h[4]
        reports = {}
        for n, r in self.features.reports.items():
            reports[n] = _without(r, fields[n]) if n in fields else r
        return _without(self.features.readings, h[1]), _without(self.actuators, h[3]), reports

    def publish_telemetry(self):
        self._seq += 1
        sensors, actuators, reports = self.shared()
        msg = {
            "v": wire.VERSION,
            "dev": self.id,
            "seq": self._seq,
            "ts": self.now(),
            "sensors": sensors,
            "actuators": actuators,
            "features": reports,
        }
        try:
            self._publish("telemetry", msg, 0, False)
            self._short = None
        except MemoryError:
            # a heap too fragmented for it now: this report is skipped
            # (its seq is the next one's), not the runtime crashed
            self._seq -= 1
            self._short = self._no_ram(self._short)

    def _no_ram(self, since):
        """A hello or telemetry due since then (ticks; None: now) found no
        block of RAM: a heap so fragmented for a few hundred bytes does not
        mend itself, so after 15 s of it, connected, the device restarts on
        a fresh one (offline reason memory), but while a set is on trial: its
        end gives the trial's RAM back, and says the hello (docs/ota.md 4.5).
        Returns since."""
        if since is None:
            return ticks_ms()
        if ticks_diff(ticks_ms(), since) > _RAM_WAIT and not self.updates.boot.trial:
            # (a restart would count as one of the set's failed trial boots)
            self.log("no RAM for %d s; restarting" % (_RAM_WAIT // 1000))
            self.stop("memory")
        return since

    def drive(self, actuator, value):
        """Drive an actuator for a feature; a failing actuator is reported,
        not raised, so the feature's control loop keeps running."""
        try:
            self.hal.write(actuator, value)
            self.actuators[actuator] = value
        except HalError as exc:
            self.emit_event("actuator_error", self.features.owners.get(actuator), str(exc))

    # ---- messages out ------------------------------------------------------

    def _publish(self, kind, msg, qos, retain):
        try:
            data = wire.dumps(kind, msg)
        except ProtocolError as exc:
            self.log("cannot send %s: %s" % (kind, exc))
            return False
        return self.client.publish(self.topic(kind), data, qos, retain)

    def hello(self, keep=False):
        """The hello message as sent (pb/hello.py, loaded for it with the
        reserve given back: it needs blocks of some size); keep: also kept
        on flash, for update mode to say hello with."""
        self.spare(True)
        from .hello import build
        from .hello import keep as keep_on_flash

        try:
            data = wire.dumps("hello", build(self))
            if keep:
                self.hello_key = keep_on_flash(self, data)
            return data
        finally:
            forget(("pb.hello",))
            self.updates.idle()
            self.spare(False)

    def _birth(self):
        # sent first on every connect, ahead of whatever queued up while
        # offline: the gateway learns who we are before anything else
        online = wire.state(self.id, "online", self.now())
        out = [(self.topic("state"), wire.dumps("state", online), 1, True)]
        try:
            out.insert(0, (self.topic("hello"), self.hello(keep=True), 1, True))
            self._hello_due = None
        except MemoryError:
            # a heap too fragmented for it now: the broker keeps the last
            # hello, and this one follows from the sampler (republish_hello)
            # instead of the connect failing and the device restarting
            self._hello_due = ticks_ms()
        return out + self.updates.birth()

    def emit_event(self, kind, feature, message):
        self.log("%s%s: %s" % (kind, " " + feature if feature else "", message))
        msg = {"v": wire.VERSION, "dev": self.id, "ts": self.now(), "kind": kind, "message": message[:200]}
        if feature:
            msg["feature"] = feature
        self._publish("event", msg, 1, False)

    def _feature_error(self, owner, exc):
        self.features.fail(owner, exc)
        self.updates.feature_failed(owner, format_exception(exc))
        self.republish_hello()

    def _on_skipped(self, topic, size):
        self.emit_event("oversized", None, "skipped a %d-byte message on %s" % (size, topic))

    def republish_hello(self):
        """Say hello again (what runs changed). Short of RAM for it, the
        sampler tries again; a reconnect's birth says it anyway, and so
        does a restart after 15 s connected without it (reason memory)."""
        if self._hello_due is None:
            self._hello_due = ticks_ms()
        if not self.client.up:
            self._hello_due = ticks_ms()  # (the birth of the next connect says it)
            return
        try:
            self.client.publish(self.topic("hello"), self.hello(), 1, True)
        except MemoryError:
            self._no_ram(self._hello_due)
            return  # (the sampler tries again)
        except ProtocolError as exc:
            self.log("cannot send hello: %s" % exc)
        self._hello_due = None

    # ---- commands ----------------------------------------------------------

    def _on_message(self, topic, payload, retain):
        mine = self.topic("")
        if topic.startswith(mine + "ota/"):
            self.updates.on_message(topic[len(mine) :], payload, retain)
            return
        if topic != self.topic("cmd") or retain:
            return  # not ours (some brokers over-deliver) or a stale retained command
        payload = bytes(payload)  # the client's buffer is not ours to keep
        self.spare(True)
        from .commands import handle

        handle(self, payload)
        forget(COMMAND_MODULES)
        self.spare(False)

    def execute(self, op, args, cmd_id="local"):
        """Carry out one command; returns the reply message."""
        from .commands import execute

        return execute(self, op, args, cmd_id)

    async def reboot_soon(self):
        # let the reply leave first
        t0 = ticks_ms()
        while self.client.pending() and ticks_diff(ticks_ms(), t0) < 2000:
            await sleep_ms(5)
        self.state["reset_request"] = "soft"
        self.keep_state()
        self.stop("reboot")

    def keep_state(self):
        """Save the state record; a flash that refuses it is reported, and
        the device runs on."""
        try:
            self.store.save("state", self.state)
        except StoreError as exc:
            self.emit_event("storage_error", None, "state not saved: %s" % exc)


def _without(values, names):
    """values without the keys in names (values itself when none is there)."""
    for k in names:
        if k in values:
            return {k: v for k, v in values.items() if k not in names}
    return values
