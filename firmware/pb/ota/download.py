# The update agent's running part (docs/ota.md, section 4): it takes an
# offer, pulls the manifest and checks its signatures and the offer's
# freshness statement (pb/ota/install.py's check_release), then pulls the blobs
# of files this device does not hold, chunk by chunk (flow control on this
# side), checks each against the manifest and stages it. Then it asks for a
# reset: the boot checks the signatures again, assembles and activates
# the new set before the runtime loads (pb/ota/install.py). Progress lives on
# flash (ota/job.json): after a power cut the download resumes where it was,
# without fetching verified bytes again.
# Loaded only while an update is under way.
#
# The transport is a function request(msg) that sends a request or an
# acknowledgement (pb/ota/transfer.py's Receiver builds both) and whose
# chunks come back through on_chunk(payload): MQTT, BLE or serial.
import hashlib
import json
import os

from ..compat import (
    MICROPYTHON,
    TimeoutError,
    asyncio,
    collect,
    const,
    forget,
    format_exception,
    fsync,
    rand_below,
    ticks_add,
    ticks_diff,
    ticks_ms,
    wait_for_ms,
)
from ..errors import ProtocolError, StoreError, TrustError
from . import files, flash
from .report import status
from .transfer import Receiver, check_offer, is_hex64, is_int

_BUF = const(512)  # what staging reads and writes at a time
_WBITS = const(10)  # zlib window of the blobs: 1 KB (docs/ota.md)
_DEADLINE_S = const(900)  # an update not downloaded this long after its offer fails
_BATTERY_MIN = const(30)  # % of charge below which an update waits (ota_battery_min)
_BUSY_MAX_S = const(3600)  # the longest an update waits for busy features (ota_busy_max_s)
# What the first check of a manifest's signatures loads, let go after (its
# RAM is the download's; tests/firmware/test_module_lists.py checks these)
CHECK_MODULES = (
    "pb.ota.install",
    "pb.ota.needs",
    "pb.ota.forms",
    "pb.ota.roots",
    "loader",
    "pb.ota.trust",
    "pb.ota.ed25519",
    "pb.ota.sha512",
    "pb.ota.clock",
)


def configure(agent, config, hal=None):
    """The agent's settings from config.json; hal: the board's backend (its
    capabilities, and its battery if it has one)."""
    agent.device = config.get("device")
    if hal is not None:
        agent.caps = hal.caps
        if "battery" in hal.caps:
            agent.battery = lambda: hal.read("battery")
    agent.battery_min = config.get("ota_battery_min", agent.battery_min)
    agent.busy_max_s = config.get("ota_busy_max_s", agent.busy_max_s)
    agent.deadline_s = config.get("ota_deadline_s", agent.deadline_s)
    agent.chunk = config.get("ota_chunk", agent.chunk)
    agent.window = config.get("ota_window", agent.window)
    agent.timeout_ms = config.get("ota_timeout_ms", agent.timeout_ms)
    agent.tries = config.get("ota_tries", agent.tries)
    if hal is not None:
        agent.partition = hal.partition  # (called only for an update with an image)


class Failed(Exception):
    """The update ends as failed(reason)."""


class _Staged(Exception):
    pass


class _CheckAtBoot(Exception):
    pass


def unhex(s):
    return bytes(int(s[i : i + 2], 16) for i in range(0, len(s), 2))


class Agent:
    """One device's update agent while it runs.

    model, counter: the device's model and the release counter it runs;
    request(msg): sends a request or acknowledgement to the gateway;
    report(status dict); now(): Unix time; link_up() -> bool; fault(name):
    a power-cut point for tests (no-op on a board); on_reset(): asks for
    the reset (the update staged, or a heap too fragmented for the download
    beside the features: it goes on in update mode). With once, run() returns when its update ends instead of
    waiting for the next offer. What to fetch is the need list the check
    of the manifest wrote (pb/ota/needs.py).
    configure() sets the device id and capabilities the release must suit,
    and battery() (the charge in %), which holds an update back while low;
    busy(), set by the runtime, why a feature is busy (the stage waits);
    tick, if set, is called during signature checks (feed a watchdog).
    """

    def __init__(self, base, model, counter, request, report, now, link_up, fault):
        self.base = base
        self.model = model
        self.counter = counter
        self.request = request
        self._report = report
        self.now = now
        self.link_up = link_up
        self.fault = fault
        self.on_reset = None
        self.once = False
        self.restart = None  # why update mode must start afresh: "ram" or "check"
        self.chunk = 4096
        self.window = 8  # chunks a stream starts with unacknowledged (at most 32)
        self.timeout_ms = 3000  # first wait for an answer; doubles per try
        self.tries = 8
        self.deadline_s = _DEADLINE_S
        self.battery = None
        self.battery_min = _BATTERY_MIN
        self.busy = None  # why a feature is busy now, or None (the runtime's features.busy)
        self.busy_max_s = _BUSY_MAX_S
        self.device = None
        self.caps = {}
        self.partition = lambda: None  # the board's esp32.Partition class, if it has one
        self.tick = None
        self.stats = {"chunks": 0, "dropped": 0, "retries": 0}
        self.check_ms = 0  # spent checking signatures in this run
        self._wake = asyncio.Event()
        self._arrived = asyncio.Event()
        self._sink = None  # where chunks go: the Receiver of the stream under way
        self._error = None
        self._cancel = None  # (update id, reason)
        self.job = flash.read_job(base, "downloading")

    def report(self, state, uid, **info):
        self._report(status(uid, state, **info))

    # ---- messages in -------------------------------------------------------

    def on_offer(self, payload, busy=None):
        """An offer (or a cancel) from the gateway. busy: why this device
        cannot take one now (a trial in progress), or None."""
        try:
            msg = check_offer(json.loads(bytes(payload)))
        except (ValueError, ProtocolError) as exc:
            self.report("failed", "-", reason="bad offer: %s" % exc)
            return
        uid = msg["id"]
        job = self.job
        if msg.get("op") == "cancel":
            if job and job["id"] == uid:
                self._cancel = (uid, "cancelled by the gateway")
            return
        if job and job["id"] == uid:
            # repeated: under way already. A newer freshness statement (the
            # gateway renews it while the update waits, deferred) replaces
            # the job's: the install checks it as it checks the first
            try:
                if (
                    json.loads(msg["freshness"]["signed"])["version"]
                    > json.loads(job["freshness"]["signed"])["version"]
                ):
                    job["freshness"] = msg["freshness"]
                    self.save_job()
            except (ValueError, KeyError, TypeError, StoreError):
                pass
            return
        try:
            if busy:
                raise Failed("busy: " + busy)
            # a first look, unverified, to refuse at once what cannot pass;
            # the signatures are checked once the manifest is on flash, before
            # any blob, and again by the install at boot
            body = json.loads(msg["freshness"]["signed"])
            if body.get("device") != self.device:
                raise Failed("mismatch: the offer's freshness statement is for another device")
            if body.get("update") != uid:
                raise Failed("mismatch: the offer's freshness statement is for another update")
            if body["model"] != self.model:
                raise Failed("wrong_model: release is for %s, this is a %s" % (body["model"], self.model))
            if body["counter"] <= self.counter:
                raise Failed(
                    "rollback: counter %d is not above the installed %d" % (body["counter"], self.counter)
                )
            # by the later of the clock and the gateway's signed time (2.3)
            floor = flash.floor_ms(self.base)
            if max(self.now(), floor / 1000) > body["expires"]:
                raise Failed("freeze: the freshness statement has expired")
        except Failed as exc:
            self.report("failed", uid, reason=str(exc))
            return
        except (ValueError, KeyError, TypeError):
            self.report("failed", uid, reason="bad_envelope: unreadable freshness statement")
            return
        if job:
            self._cancel = (job["id"], "replaced by update " + uid)
            self.report("failed", job["id"], reason="replaced by update " + uid)
        self.job = {
            "id": uid,
            "manifest": msg["manifest"],
            "size": msg["size"],
            "freshness": msg["freshness"],
            "counter": body["counter"],
            "offered_at": self.now(),
            "phase": "downloading",
        }
        if msg.get("idle") is True:
            self.job["idle"] = True  # the install waits while a feature is busy
        try:
            self.save_job()
        except StoreError as exc:
            self.job = None
            self.report("failed", uid, reason="no_space: the update cannot be recorded: %s" % exc)
            return
        self.report("offered", uid, counter=body["counter"])
        self._wake.set()

    def check_cancel(self, uid):
        """Raise Failed if update uid was cancelled or replaced."""
        c = self._cancel
        if c is not None and c[0] == uid:
            self._cancel = None
            raise Failed(c[1])

    def save_job(self):
        flash.write_job(self.base, self.job)

    def on_chunk(self, payload):
        """A chunk: kept if it is the next byte of the stream under way;
        a loss or a corrupt one asks again from there; anything else (a
        repeat, another stream's) is dropped."""
        rx = self._sink
        got = rx.feed(payload) if rx is not None else None
        if got is None:
            self.stats["dropped"] += 1
            return
        if got is True:
            self.stats["retries"] += 1
            rx.ts = ticks_add(ticks_ms(), rand_below(200))
            self.request(rx.request())
        elif isinstance(got, str):
            self._error = got
        else:
            o = rx.objs[got[0]]
            f = o[6]
            if f is None:
                f = o[6] = open(o[4], "ab" if got[1] > o[5] else "wb")
            f.write(got[2])
            f.flush()
            rx.ts = ticks_ms()
            self.stats["chunks"] += 1
            if o[2] == o[3]:
                # a blob's .z is closed, not synced: the file staged from it is
                # synced before its rename, and a .z a power cut shortened is
                # fetched on from its length (or fails its hash: never staged).
                # The manifest is kept as it is: synced. (On a board the flush
                # above is littlefs's sync already.)
                if o[0] == "manifest":
                    fsync(f)
                f.close()
                o[6] = None
            self.fault("chunk")
            ack = rx.ack()
            if ack is not None:
                self.request(ack)
        self._arrived.set()

    # ---- the loop ----------------------------------------------------------

    async def run(self):
        """Carry out offered updates; resumes one a reset interrupted."""
        while True:
            job = self.job
            if job is None:
                if self.once:
                    return  # (update mode with its offer refused: back to normal)
                self._wake.clear()
                await self._wake.wait()
                continue
            reason = None
            clean = True
            try:
                await self._download(job)
            except _Staged:
                if self.on_reset is not None:
                    self.on_reset()
                return
            except _CheckAtBoot:
                self._close()
                self.restart = "check"
                return
            except MemoryError:
                # a fragmented heap, not a broken update: what is on flash
                # stays, and the download goes on after a reset, in update
                # mode (from the runtime: a reset asked for, not a crash)
                self._close()
                if not self.once:
                    if self.on_reset is None:
                        raise
                    if self.job is not None:  # (the job now: an offer may have replaced job)
                        self.job["mode"] = "lean"
                        self.save_job()  # (failing too, it crashes the runtime, as before)
                    self.on_reset()
                    return
                self.restart = "ram"
                return
            except Failed as exc:
                reason = str(exc)
            except (OSError, StoreError, ValueError) as exc:
                reason = "storage: %s" % format_exception(exc)
                clean = False
            self._close()
            if self.job is job:  # (a replaced one was reported when replaced)
                self.report("failed", job["id"], reason=reason, counter=job["counter"])
                self.job = None
                flash.remove_job(self.base)
                if clean:
                    files.remove_tree(files.staged(self.base))
            if self.once and self.job is None:
                return

    def _check_deadline(self, job):
        # the time the update was deferred does not count (docs/ota.md 4.3)
        late = self.now() - job["offered_at"] - job.get("paused", 0)
        if late > self.deadline_s:
            raise Failed("deadline: not downloaded within %d s of the offer" % self.deadline_s)

    async def _charged(self, job):
        # a board with a battery holds the update back while it is low; the
        # code for it is loaded only there (pb/ota/defer.py)
        if self.battery is not None:
            from .defer import charged

            await charged(self, job)
            forget(("pb.ota.defer",))

    async def _download(self, job):
        uid = job["id"]
        await self._charged(job)
        self._check_deadline(job)
        stage = files.staged(self.base) + "/"
        files.ensure_dir(stage[:-1])
        mpath = stage + "manifest.json"
        if files.size(mpath) != job["size"] or files.file_sha256(mpath)[1] != job["manifest"]:
            files.remove(mpath)
            await self.fetch(uid, job, [("manifest", job["manifest"], mpath, job["size"], 0)])
            if files.file_sha256(mpath)[1] != job["manifest"]:
                files.remove(mpath)
                raise Failed("mismatch: the manifest is not the one offered")
        # what this device lacks: the need list the check wrote (update mode
        # reads it a line at a time, never the whole manifest)
        head, needed = self._needs(job, mpath)
        total = head["total"]
        free = files.free_bytes(self.base)
        if 0 <= free < head["need"]:
            needed.close()
            raise Failed("no_space: the update needs %d bytes of flash, %d are free" % (head["need"], free))
        try:
            done = 0
            f = True
            while f is not None:
                # the next blobs this device lacks, in one stream: 16, or 4 in
                # update mode (each holds its entry in RAM while it comes)
                batch = []  # type: list[dict]
                while len(batch) < (4 if self.once else 16):
                    f = next(needed, None)
                    if f is None:
                        break
                    staged = stage + f["sha256"]
                    if (
                        files.size(staged) == f["size"]
                        and files.file_sha256(staged, f["size"])[1] == f["sha256"]
                    ):
                        done += f["zsize"]
                    else:
                        batch.append(f)
                if not batch:
                    continue
                self.report("downloading", uid, bytes=done, total=total, counter=job["counter"])
                objs = []
                for e in batch:
                    objs.append((e["zsha256"], e["zsha256"], stage + e["sha256"] + ".z", e["zsize"], 0))
                await self.fetch(uid, job, objs)
                # each staged once the stream is over: inflating wants its
                # window in one piece, on a heap the chunks have left
                objs = e = None
                collect()
                for e in batch:
                    staged = stage + e["sha256"]
                    z = staged + ".z"
                    if files.file_sha256(z, e["zsize"]) != (e["zsize"], e["zsha256"]):
                        files.remove(z)
                        raise Failed("mismatch: %s: the bytes received are not the ones signed" % e["path"])
                    n, digest = inflate(z, staged + ".tmp", e["size"])
                    if (n, digest) != (e["size"], e["sha256"]):
                        files.remove(staged + ".tmp")
                        if n > e["size"]:
                            raise Failed("mismatch: %s is longer than signed" % e["path"])
                        raise Failed("mismatch: %s is other than signed" % e["path"])
                    os.rename(staged + ".tmp", staged)
                    files.remove(z)
                    self.fault("staged-file")
                    done += e["zsize"]
        finally:
            needed.close()
        image = head.get("image")
        if image:
            # the MicroPython image (pb/ota/image.py, loaded for this alone)
            from . import image as img

            job["image"] = image  # (with its progress, "img")
            try:
                await img.download(self, uid, job, done, total, inflated)
            except img.Refused as exc:
                raise Failed(str(exc)) from None
            finally:
                forget(("pb.ota.image",))
        self.report("downloading", uid, bytes=total, total=total, counter=job["counter"])
        await self._charged(job)  # the install and the trial follow at once
        if job.get("idle") and self.busy is not None and self.busy() is not None:
            # a feature at work is not cut short by the install's reset
            from .defer import idle

            await idle(self, job)
            forget(("pb.ota.defer",))
        job["phase"] = "staged"
        flash.write_job(self.base, job)
        self.fault("staged")
        self.report("staged", uid, counter=job["counter"], check_ms=self.check_ms + job.get("check_ms", 0))
        raise _Staged()

    def _needs(self, job, mpath):
        """(head, entries) of job's need list (read_need). Without one of its
        own (not checked yet, or a list missing or unreadable), the manifest
        is checked first, which writes it: here in the background, at the
        next boot in update mode."""
        if job.get("checked") == job["manifest"]:
            try:
                return read_need(self.base, job)
            except ValueError:
                pass  # (checked again, which writes it)
        if self.once:
            # update mode runs on a small heap beside the link: the signatures
            # are checked at the next boot, on a nearly empty one, before any
            # blob (pb/ota/install.py check_fetched)
            job.pop("checked", None)
            job["verify"] = "boot"
            self.save_job()
            raise _CheckAtBoot()
        # (kept, were the check to find no RAM here: then the reset into
        # update mode checks it at boot first, on an empty heap, without a
        # turn of update mode that would only find it unchecked)
        job["verify"] = "boot"
        self._check(job, mpath)
        del job["verify"]
        job["checked"] = job["manifest"]
        self.save_job()
        return read_need(self.base, job)

    def _check(self, job, mpath):
        """Check the staged manifest's signatures and the offer's freshness
        statement before any blob is fetched (the install at boot checks them
        all again), and write the need list. The checking code is loaded
        for this alone and let go after: its RAM is the download's. Raises
        Failed; a MemoryError ends run() with a reset into update mode (the
        download goes on there, and the check is made at boot)."""
        collect()
        t0 = ticks_ms()
        try:
            from .install import check_job

            check_job(self, job, mpath)
        except TrustError as exc:
            raise Failed("%s: %s" % (exc.code, exc.message)) from None
        except (ValueError, KeyError, TypeError):
            raise Failed("bad_manifest: the manifest is unreadable") from None
        finally:
            forget(CHECK_MODULES)
            self.check_ms += ticks_diff(ticks_ms(), t0)

    async def fetch(self, uid, job, objs):
        """Fetch objs in one stream: each (obj: "manifest" or a blob's
        zsha256, sha: its SHA-256, path, size, origin), size bytes of obj
        from byte origin into path, appended to what path holds already.
        A silence asks again after ota_timeout_ms, doubled with each try
        (a dead link is not the gateway's silence)."""
        want = objs
        objs = []
        for w in want:
            # the Receiver's [name, tag, offset, end], then [path, origin, open file]
            have = files.size(w[2])
            if have > w[3]:
                files.remove(w[2])
            have = max(files.size(w[2]), 0)
            name = w[0] if w[0] == "manifest" else w[0][:16]
            objs.append([name, unhex(w[1][:16]), w[4] + have, w[4] + w[3], w[2], w[4], None])
        want = None
        rx = Receiver(self.device, uid, self.chunk, self.window)
        self._error = None
        self._sink = rx
        rx.ts = ticks_ms()
        try:
            for o in objs:
                if o[2] < o[3]:
                    self.request(rx.request(objs))
                    break
            while rx.cur < len(rx.objs):
                self.check_cancel(uid)
                if self._error:
                    raise Failed("gateway: %s" % self._error)
                self._check_deadline(job)
                o = objs[rx.cur]
                if rx.tries > self.tries:
                    raise Failed(
                        "stalled: no answer for %s at byte %d after %d tries" % (o[0], o[2], self.tries)
                    )
                self._arrived.clear()
                try:
                    await wait_for_ms(self._arrived.wait(), 250)
                except TimeoutError:
                    pass
                if self._error:
                    continue
                now = ticks_ms()
                if ticks_diff(now, rx.ts) < min(self.timeout_ms << rx.tries, 20000):
                    continue
                if not self.link_up():
                    rx.ts = now
                    continue
                self.stats["retries"] += 1
                rx.ts = ticks_add(now, rand_below(200))
                self.request(rx.request())
        finally:
            self._close()

    def _close(self):
        rx = self._sink
        self._sink = None
        if rx is not None:
            for o in rx.objs:
                if o[6] is not None:
                    o[6].close()
                    o[6] = None


def inflate(src, dst, max_size):
    """Inflate the zlib file src into dst; (size, SHA-256 hex) of the output.
    Stops as soon as the output would exceed max_size (returns max_size + 1)."""
    h = hashlib.sha256()
    n = 0
    buf = bytearray(_BUF)
    mv = memoryview(buf)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for chunk in inflated(fi, buf, mv):
            n += len(chunk)
            if n > max_size:
                return max_size + 1, ""
            h.update(chunk)
            fo.write(chunk)
        fsync(fo)
    return n, files.hex_of(h.digest())


def inflated(fi, buf, mv):
    """The inflated bytes of the zlib stream in fi from where it is, through
    buf (mv its memoryview). A stream of stored blocks alone (what a release
    makes of a file deflate cannot shrink: random tables, say) is copied:
    a board's deflate module takes about as long over stored bytes as over
    coded ones (some 0.7 us a byte on the unix port). Its blocks are walked
    first: their lengths must end the file with the 4 bytes of its Adler-32
    (not checked: the caller checks the output's SHA-256); anything else
    is inflated as any stream."""
    at = fi.tell()
    z = fi.read(2)
    n = -1
    if len(z) == 2 and z[0] & 15 == 8 and z[0] >> 4 <= 7 and not z[1] & 32 and (z[0] << 8 | z[1]) % 31 == 0:
        while True:
            h = fi.read(5)
            if len(h) < 5 or h[0] & 6 or (h[1] | h[2] << 8) != (h[3] | h[4] << 8) ^ 0xFFFF:
                n = -1
                break
            n = h[1] | h[2] << 8
            fi.seek(n, 1)
            if h[0] & 1:
                break
    if n >= 0 and len(fi.read(5)) == 4:
        fi.seek(at + 2)
        while True:
            h = fi.read(5)
            n = h[1] | h[2] << 8
            while n > 0:
                k = fi.readinto(mv[: min(n, len(buf))])
                if not k:
                    return  # (the file shrank under us: the caller's checks say so)
                n -= k
                yield mv[:k]
            if h[0] & 1:
                return
    fi.seek(at)
    if MICROPYTHON:
        import deflate

        # the window is fixed at 2^10: a blob cannot make us allocate more
        d = deflate.DeflateIO(fi, deflate.ZLIB, _WBITS)
        while True:
            k = d.readinto(buf)
            if not k:
                return
            yield mv[:k]
    else:
        # (CPython's, apart: its names would take a board's heap)
        from .zinflate import inflated as cpython

        yield from cpython(fi, buf, mv, _BUF, _WBITS)


def read_need(base, job):
    """(head, entries) of the need list job's check wrote (pb/ota/needs.py):
    entries yields the file entries one at a time (the file stays open
    until they are all read or the iterator is closed). Raises ValueError
    if the list is missing, unreadable or another update's (of another
    manifest, or update id)."""
    path = base + "/" + flash.NEED
    try:
        f = open(path, "rb")
    except OSError:
        try:
            f = open(path + ".tmp", "rb")  # (a rename cut short)
        except OSError:
            raise ValueError("no need list") from None
    try:
        head = json.loads(f.readline())
        if (
            not isinstance(head, dict)
            or head.get("manifest") != job["manifest"]
            or head.get("id") != job["id"]
            or not _count(head.get("need"))
            or not _count(head.get("total"))
            or not isinstance(head.get("image", {}), dict)
        ):
            raise ValueError("the need list is another update's")
    except BaseException:
        f.close()
        raise
    return head, _entries(f)


def _entries(f):
    try:
        while True:
            line = f.readline()
            if not line:
                return
            e = json.loads(line)
            # what the download uses of an entry: names of staged files, sizes
            if (
                not isinstance(e, dict)
                or not is_hex64(e.get("sha256"))
                or not is_hex64(e.get("zsha256"))
                or not _count(e.get("size"))
                or not _count(e.get("zsize"))
                or not isinstance(e.get("path"), str)
            ):
                raise ValueError("a need list entry is unreadable")
            yield e
    finally:
        f.close()


def _count(n):
    return is_int(n) and n >= 0
