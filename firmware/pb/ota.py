# The update agent's running part (docs/ota.md, section 4): it takes an
# offer, pulls the manifest and then the blobs of files this device does not
# hold, chunk by chunk (flow control on this side), checks each against the
# manifest, and stages them. Then it asks for a reset: the boot guard checks
# the signatures, assembles and activates the set before the runtime loads
# (pb/install.py). Progress lives on flash (ota/job.json), so after a power
# cut the download resumes where it was, without fetching verified bytes again.
#
# The transport is anything with request(update_id, obj, off, length, seq)
# whose chunks come back through on_chunk(payload): MQTT, BLE or serial.
import json
import os

from . import otafs
from .compat import (
    TimeoutError,
    asyncio,
    format_exception,
    fsync,
    rand_below,
    ticks_diff,
    ticks_ms,
    wait_for_ms,
)
from .errors import ProtocolError, StoreError
from .otaproto import FLAG_ERROR, check_offer, decode_chunk, is_hex64
from .store import read_bytes, write_atomic

JOB = "ota/job.json"
STAGE = "ota/stage"
_TRIES = 8
_TIMEOUT_MS = 3000
_MAX_TIMEOUT_MS = 20000
_MARGIN = 4096  # bytes of flash kept free


class Failed(Exception):
    """The update ends as failed(reason)."""


class _Staged(Exception):
    pass


def unhex(s):
    return bytes(int(s[i : i + 2], 16) for i in range(0, len(s), 2))


class Agent:
    """One device's update agent while it runs.

    model, counter: this device's model and the release counter it runs;
    held: a function giving {sha256: path} of the running set's files;
    transport: request(uid, obj, off, len, seq); report(status dict);
    now() -> Unix time; link_up() -> bool; fault(name): a power-cut point
    for tests (a no-op on a board); on_staged(): ask for the reset.
    """

    def __init__(self, base, model, counter, held, transport, report, now, link_up, fault=None):
        self.base = base
        self.model = model
        self.counter = counter
        self.held = held
        self.transport = transport
        self._report = report
        self.now = now
        self.link_up = link_up
        self.fault = fault or _no_fault
        self.on_staged = None
        self.chunk = 2048
        self.window = 2
        self.job = self._load_job()
        self.stats = {"chunks": 0, "dropped": 0, "retries": 0, "bytes": 0}
        self._wake = asyncio.Event()
        self._arrived = asyncio.Event()
        self._out = {}  # seq -> [offset, length, sent_at, tries]
        self._sink = None  # [obj, tag, file, next offset]
        self._ahead = {}  # offset -> bytes that arrived before their turn
        self._seq = 0
        self._error = None
        self._cancel = None  # (update id, reason)

    def _p(self, rel):
        return self.base + "/" + rel

    def _load_job(self):
        data = read_bytes(self._p(JOB))
        try:
            job = json.loads(data) if data else None
        except ValueError:
            job = None
        return job if isinstance(job, dict) and job.get("phase") in ("offered", "downloading") else None

    def _save_job(self):
        write_atomic(self._p(JOB), json.dumps(self.job).encode("utf-8"))

    def report(self, state, uid, **info):
        msg = {"v": 1, "id": uid, "state": state, "ts": self.now()}
        for k in info:
            if info[k] is not None:
                msg[k] = info[k]
        self._report(msg)

    # ---- messages in -------------------------------------------------------

    def on_offer(self, payload, busy=None):
        """An offer (or a cancel) from the gateway. busy: why this device
        cannot take one now (a trial in progress), or None."""
        try:
            msg = check_offer(json.loads(payload))
        except (ValueError, ProtocolError) as exc:
            self.report("failed", "-", reason="bad offer: %s" % exc)
            return
        uid = msg["id"]
        job = self.job
        if msg.get("op") == "cancel":
            if job and job["id"] == uid:
                self._cancel = (uid, "cancelled by the gateway")
                self._wake.set()
            return
        if job and job["id"] == uid:
            return  # repeated: the update is already under way
        if busy:
            self.report("failed", uid, reason="busy: " + busy)
            return
        fresh = msg["freshness"]
        try:
            # a first look, unverified, to refuse at once what cannot pass;
            # the boot guard checks the signed statement before activating
            body = json.loads(fresh["signed"])
            if body["model"] != self.model:
                raise Failed(
                    "wrong_model: release is for %s, this device is a %s" % (body["model"], self.model)
                )
            if body["counter"] <= self.counter:
                raise Failed(
                    "rollback: release counter %d is not above the installed %d"
                    % (body["counter"], self.counter)
                )
            if self.now() > body["expires"]:
                raise Failed("freeze: the offer's freshness statement has expired")
        except Failed as exc:
            self.report("failed", uid, reason=str(exc))
            return
        except (ValueError, KeyError, TypeError):
            self.report("failed", uid, reason="bad_envelope: the offer's freshness statement is unreadable")
            return
        if job:
            self._cancel = (job["id"], "replaced by update %s" % uid)
            self.report("failed", job["id"], reason="replaced by update %s" % uid)
        self.job = {
            "id": uid,
            "manifest": msg["manifest"],
            "size": msg["size"],
            "freshness": fresh,
            "counter": body["counter"],
            "offered_at": self.now(),
            "phase": "offered",
        }
        self._save_job()
        self.report("offered", uid, counter=body["counter"])
        self._wake.set()

    def on_chunk(self, payload):
        """A chunk from the transport; wrong, late or repeated ones are dropped."""
        try:
            flags, seq, off, tag, data = decode_chunk(payload)
        except ProtocolError:
            self.stats["dropped"] += 1
            return
        req = self._out.get(seq)
        sink = self._sink
        if req is None or sink is None or tag != sink[1] or off != req[0]:
            self.stats["dropped"] += 1
            return
        if flags & FLAG_ERROR:
            self._error = bytes(data).decode("utf-8")[:120]
            self._arrived.set()
            return
        if len(data) != req[1]:
            self.stats["dropped"] += 1
            return
        del self._out[seq]
        self.stats["chunks"] += 1
        if off == sink[3]:
            self._write(data)
            while sink[3] in self._ahead:
                self._write(self._ahead.pop(sink[3]))
        elif off > sink[3] and len(self._ahead) < self.window:
            self._ahead[off] = bytes(data)
        self._arrived.set()

    def _write(self, data):
        s = self._sink
        s[2].write(data)
        s[2].flush()
        s[3] += len(data)
        self.stats["bytes"] += len(data)
        self.fault("chunk")

    # ---- the loop ----------------------------------------------------------

    async def run(self):
        """Carry out offered updates; resumes one a reset interrupted."""
        while True:
            if self.job is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self.job
            try:
                await self._download(job)
            except _Staged:
                if self.on_staged is not None:
                    self.on_staged()
                return
            except Failed as exc:
                self._end(job, str(exc), clean=True)
            except (OSError, StoreError, ValueError) as exc:
                self._end(job, "storage: " + format_exception(exc), clean=False)

    def _end(self, job, reason, clean):
        self._close_sink()
        if self.job is not job:
            return  # replaced: its failure was reported when the new offer came
        self.report("failed", job["id"], reason=reason, counter=job.get("counter"))
        self.job = None
        otafs.remove(self._p(JOB))
        if clean:
            otafs.remove_tree(self._p(STAGE))

    def _check_cancel(self, uid):
        c = self._cancel
        if c is not None and c[0] == uid:
            self._cancel = None
            raise Failed(c[1])

    async def _download(self, job):
        uid = job["id"]
        otafs.ensure_dir(self._p(STAGE))
        if job["phase"] == "offered":
            job["phase"] = "downloading"
            self._save_job()
        # the manifest first: it names everything else
        mpath = self._p(STAGE + "/manifest.json")
        if otafs.size(mpath) != job["size"] or otafs.file_sha256(mpath)[1] != job["manifest"]:
            otafs.remove(mpath)
            await self._fetch("manifest", unhex(job["manifest"])[:8], mpath, job["size"], uid)
            if otafs.file_sha256(mpath)[1] != job["manifest"]:
                otafs.remove(mpath)
                raise Failed("mismatch: the manifest is not the one offered")
        files = _files(read_bytes(mpath), self.model, job["counter"])
        held = self.held()
        needed = []
        names = {}
        total = 0
        for f in files:
            if f["sha256"] not in held and f["sha256"] not in names:
                names[f["sha256"]] = True
                needed.append(f)
                total += f["zsize"]
        self._check_space(files, needed)
        done = 0
        for f in needed:
            self._check_cancel(uid)
            staged = self._p(STAGE + "/" + f["sha256"])
            if otafs.size(staged) == f["size"] and otafs.file_sha256(staged, f["size"])[1] == f["sha256"]:
                done += f["zsize"]
                continue
            zpath = staged + ".z"
            self.report("downloading", uid, bytes=done, total=total, counter=job["counter"])
            await self._fetch(f["zsha256"], unhex(f["zsha256"])[:8], zpath, f["zsize"], uid, done, total)
            zn, zdigest = otafs.file_sha256(zpath, f["zsize"])
            if zn != f["zsize"] or zdigest != f["zsha256"]:
                otafs.remove(zpath)
                raise Failed("mismatch: %s: the bytes received do not match the manifest" % f["path"])
            n, digest = otafs.inflate(zpath, staged + ".tmp", f["size"])
            if n > f["size"]:
                otafs.remove(staged + ".tmp")
                raise Failed("mismatch: %s is longer than its manifest says" % f["path"])
            if n != f["size"] or digest != f["sha256"]:
                otafs.remove(staged + ".tmp")
                raise Failed("mismatch: %s does not match its manifest" % f["path"])
            os.rename(staged + ".tmp", staged)
            otafs.remove(zpath)
            self.fault("staged-file")
            done += f["zsize"]
        self.report("downloading", uid, bytes=total, total=total, counter=job["counter"])
        job["phase"] = "staged"
        self._save_job()
        self.fault("staged")
        self.report("staged", uid, counter=job["counter"])
        raise _Staged()

    def _check_space(self, files, needed):
        free = otafs.free_bytes(self.base)
        if free < 0:
            return
        need = _MARGIN
        for f in needed:
            need += f["zsize"] + f["size"]
        for f in files:
            need += f["size"]
        if need > free:
            raise Failed("no_space: the update needs %d bytes of flash, %d are free" % (need, free))

    # ---- pulling bytes -----------------------------------------------------

    async def _fetch(self, obj, tag, path, total, uid, done=0, grand=0):
        """Fetch obj into path, appending to the bytes already there."""
        have = otafs.size(path)
        if have > total:
            otafs.remove(path)
            have = -1
        f = open(path, "ab" if have > 0 else "wb")
        self._sink = [obj, tag, f, max(have, 0)]
        self._ahead = {}
        self._out = {}
        self._error = None
        nxt = self._sink[3]
        last_report = ticks_ms()
        try:
            while self._sink[3] < total:
                self._check_cancel(uid)
                if self._error:
                    raise Failed("gateway: " + self._error)
                while len(self._out) < self.window and nxt < total:
                    n = min(self.chunk, total - nxt)
                    self._seq += 1
                    self._out[self._seq] = [nxt, n, ticks_ms(), 0]
                    self.transport.request(uid, obj, nxt, n, self._seq)
                    nxt += n
                self._arrived.clear()
                try:
                    await wait_for_ms(self._arrived.wait(), 250)
                except TimeoutError:
                    pass
                self._retry(uid, obj)
                if grand and ticks_diff(ticks_ms(), last_report) > 2000:
                    last_report = ticks_ms()
                    self.report("downloading", uid, bytes=done + self._sink[3], total=grand)
            fsync(f)
        finally:
            self._close_sink()

    def _retry(self, uid, obj):
        now = ticks_ms()
        up = self.link_up()
        for seq in list(self._out):
            off, n, sent, tries = self._out[seq]
            if ticks_diff(now, sent) < min(_TIMEOUT_MS << tries, _MAX_TIMEOUT_MS):
                continue
            if not up:
                self._out[seq][2] = now  # a dead link is not the gateway's silence
                continue
            if tries >= _TRIES:
                raise Failed("stalled: no answer for %s at byte %d after %d tries" % (obj[:12], off, tries))
            del self._out[seq]
            self._seq += 1
            self._out[self._seq] = [off, n, ticks_ms() + rand_below(200), tries + 1]
            self.stats["retries"] += 1
            self.transport.request(uid, obj, off, n, self._seq)

    def _close_sink(self):
        s = self._sink
        self._sink = None
        if s is not None:
            try:
                s[2].close()
            except OSError:
                pass


def _files(data, model, counter):
    """The file list of a staged manifest, with a first, unverified look at
    what would make the boot guard refuse it anyway."""
    try:
        body = json.loads(json.loads(data)["signed"])
        files = body["files"]
        if body["model"] != model or body["counter"] != counter:
            raise Failed("mismatch: the manifest is not for the release offered")
        for f in files:
            for k in ("size", "zsize"):
                if not isinstance(f[k], int) or f[k] < 0:
                    raise Failed("bad_manifest: %s has no valid %s" % (f.get("path"), k))
            for k in ("sha256", "zsha256"):
                if not is_hex64(f[k]):  # it names a file in staging
                    raise Failed("bad_manifest: %s has no valid %s" % (f.get("path"), k))
        return files
    except (ValueError, KeyError, TypeError):
        raise Failed("bad_manifest: the manifest is unreadable") from None


def _no_fault(name):
    return None
