# Installing a staged update, at boot, before the runtime is loaded (as
# MCUboot does): RAM is plentiful then, so the signatures are checked here,
# the new set is assembled in the slot not running and checked file by file,
# and the pointer is switched with one atomic rename. Every step is
# idempotent: a power cut anywhere in here just runs it again at next boot.
import json
import os

from ..compat import collect, forget, format_exception, fsync, ticks_diff, ticks_ms
from ..errors import StoreError, TrustError
from ..store import exists
from . import files, flash, trust
from .flash import SLOTS, boot_loader, read_json, write_json
from .report import status

_MAX_INSTALLS = 3
_SIGNATURE_MODULES = ("pb.ota.ed25519", "pb.ota.sha512", "pb.ota.roots", "pb.ota.clock")


def _status(job, state, now, reason=None):
    return status(job["id"], state, job.get("counter", 0), reason, ts=now)


def _load_crypto(room=None):
    """Free the block the boot kept whole (room), then load the signature
    code: its tables and the manifest's copies need blocks of some KB that
    the boot's many small ones leave nowhere else."""
    if room is not None:
        room()
        collect()
    from . import ed25519  # noqa: F401


def verify(pub, msg, sig, tick=None):
    from .ed25519 import verify as ed_verify

    return ed_verify(pub, msg, sig, tick)


def install_staged(base, device, now, fault=None, room=None, partitions=None):
    """Install a staged update, if there is one (device: id, model, caps, api);
    True if there was one, installed or refused: the device then resets, so
    that the new set's trial starts on a fresh heap (False too when the new
    image already runs: its trial goes on at this boot). room(), if given,
    frees a block the boot kept whole for the signature check; partitions():
    the board's esp32.Partition class or None (hal.partition), called only
    for an update with an image."""
    job = flash.read_job(base, "staged")
    if job is None:
        return False
    p = install(base, job, device, running(base), now, fault, room=room, partitions=partitions)
    if not (p and p.get("image")):
        return True
    # (the new image runs already, on trial: a power cut came after it was
    # chosen to boot. The bootloader would take a reset now for a failed start)
    part = partitions()
    return not (part and part(part.RUNNING).info()[4] == p["image"])


def install(base, job, device, running, now, fault=None, tick=None, room=None, partitions=None):
    """Check and activate a staged update. device: (device id, model, caps,
    api); running: (set dir, counter, manifest) of the running set;
    partitions(): the board's esp32.Partition class or None (an update with
    an image).
    Returns the new pointer, or None if the update failed (reported,
    staging removed)."""
    fault = fault or (lambda name: None)
    done = flash.read_pointer(base)
    if done and done.get("update") == job["id"] and done.get("manifest") == job["manifest"]:
        # the pointer switched before the power went: only the tidying is
        # left, and the image chosen to boot if that was cut short too
        label = done.get("image")
        part = partitions() if label and partitions else None
        if part and part(part.RUNNING).info()[4] != label:
            part(label).set_boot()
            fault("image-boot")
        _tidy(base, job, now)
        return done
    job["installs"] = job.get("installs", 0) + 1
    flash.write_job(base, job)  # counted first
    try:
        _load_crypto(room)
        p = _install(base, job, device, running, now, fault, tick, partitions)
    except MemoryError as exc:
        if job["installs"] < _MAX_INSTALLS:
            raise  # a short heap, not a bad update: the device resets and tries again
        reason = "install: out of RAM %d times, last at %s (%s)" % (
            _MAX_INSTALLS,
            _step[0],
            format_exception(exc),
        )
    except TrustError as exc:
        reason = "%s: %s" % (exc.code, exc.message)
    except (OSError, StoreError, ValueError, KeyError, TypeError) as exc:
        reason = "install: " + format_exception(exc)
    else:
        _tidy(base, job, now)
        fault("installed")
        return p
    boot_loader().add_report(base, _status(job, "failed", now, reason))
    flash.remove_job(base)
    files.remove_tree(files.staged(base))
    return None


def running(base):
    """(set dir, counter, manifest) of the running set."""
    p = flash.read_pointer(base)
    if p is not None and not p.get("corrupt"):
        return (p["set"], p.get("counter", 0), p.get("manifest"))
    if files.is_dir(base + "/" + flash.FACTORY):
        return (flash.FACTORY, 0, None)
    return (None, 0, None)


def check_fetched(base, device, now, room=None, partitions=None):
    """Check the signatures of a manifest that update mode fetched and left
    for the boot to check (its heap is too small for Ed25519), before any
    blob is fetched. A refusal is reported and ends the update. True if a
    check ran: the boot resets after it, so that update mode starts on a
    heap the check's code has not cut up."""
    job = flash.read_job(base, "downloading")
    if job is not None and flash.to_check(job):
        _check_fetched(base, job, device, running(base), now, room, partitions)
        return True
    return False


def _staged_manifest(base, job):
    """The staged manifest, open to be parsed as it is read (no copy of its
    bytes in RAM beside its signed text). Raises TrustError if it is not
    the one offered."""
    path = files.staged(base, "manifest.json")
    try:
        n, digest = files.file_sha256(path, trust.MAX_ENVELOPE)
    except OSError:
        n = digest = None
    if n is None or n > trust.MAX_ENVELOPE or digest != job["manifest"]:
        raise TrustError("mismatch", "staged manifest is missing or not the one offered")
    return open(path, "rb")


def _trust_state(base):
    return read_json(base + "/" + flash.TRUST_STATE) or {"freshness": 0}


def _check_fetched(base, job, device, run, now, room=None, partitions=None):
    """At boot, on a nearly empty heap: check_release for a manifest that
    update mode fetched, before it fetches any blob. Passed, the job is
    marked checked (update mode goes on); refused, the update fails
    (reported, job and staging removed). A MemoryError is a short heap, not
    a bad update: raised (a reset) until the third attempt."""
    job["checks"] = job.get("checks", 0) + 1
    flash.write_job(base, job)  # counted first
    t0 = ticks_ms()
    try:
        _load_crypto(room)
        with _staged_manifest(base, job) as f:
            body = check_release(base, job, device, run[1], f)[0]
        image = body.get("image")
        if image is not None and (partitions is None or partitions() is None):
            raise TrustError("wrong_hardware", "this board cannot update its MicroPython image")
        from .needs import list_needs

        list_needs(
            base, job, body["files"], run[0], image
        )  # (the image in its head: update mode reads no manifest)
        body = None
    except MemoryError:
        if job["checks"] < _MAX_INSTALLS:
            raise
        reason = "check: out of RAM %d times" % _MAX_INSTALLS
    except TrustError as exc:
        reason = "%s: %s" % (exc.code, exc.message)
    except (OSError, StoreError, ValueError, KeyError, TypeError) as exc:
        reason = "check: " + format_exception(exc)
    else:
        job["checked"] = job["manifest"]
        # the time it took, for the staged status (benchmarks report checks apart)
        job["check_ms"] = job.get("check_ms", 0) + ticks_diff(ticks_ms(), t0)
        del job["checks"]
        del job["verify"]
        flash.write_job(base, job)
        return True
    boot_loader().add_report(base, _status(job, "failed", now, reason))
    flash.remove_job(base)
    files.remove_tree(files.staged(base))
    return False


def _tidy(base, job, now):
    boot_loader().add_report(base, _status(job, "activating", now))
    flash.remove_job(base)
    files.remove_tree(files.staged(base))


_step = ["reading the manifest"]  # where _install is: what a MemoryError reports


def check_release(base, job, device, run_counter, data, tick=None):
    """The manifest envelope (data: its file, open, parsed as it is read)
    and the job's freshness statement, checked as docs/ota.md 4.4 lists:
    signed by the trusted root's roles, suited to this device (id, model,
    caps, api) and above run_counter, offered as the job's update. Returns
    (manifest body, freshness body). The download agent runs this before it
    fetches any blob, and the install again. Raises TrustError."""
    dev_id, model, _, api = device  # (the caps: a feature waits for its hardware)
    # the manifest's object is parsed once its signatures passed: a large
    # one (the whole runtime's) and the signature code do not fit together
    collect()  # (before the largest blocks of the check: the signed text's)
    raw, body, sigs = trust.open_envelope(data, False)
    from .roots import trusted_root

    root_data = trusted_root(base)[1]
    if root_data is None:
        raise TrustError("bad_root", "no trusted root on this device (ota/root.<version>.json)")
    _step[0] = "checking signatures"
    root = trust.load_root(root_data, verify)
    root_data = None
    trust.check_role(root, "release", raw, sigs, lambda k, m, s: verify(k, m, s, tick))
    sigs = None
    # the freshness statement's signatures too, before the manifest's object
    # is in RAM beside the signature code (unless this job's install
    # accepted it already)
    fresh = None
    if job.get("fresh_ok") != job.get("counter"):
        fresh = _signed_freshness(base, job, root, dev_id, tick)
    root = None
    # the signature code goes (a later check loads it again): the manifest's
    # object is the largest thing the check holds
    forget(_SIGNATURE_MODULES)
    body = trust.signed_object(raw)
    raw = None
    trust.check_manifest(body)
    trust.check_for_device(body, model, api, run_counter)
    fbody = None
    if job.get("fresh_ok") != body["counter"]:
        if fresh is None:  # (a job whose counter is not its manifest's: refused below)
            fresh = _signed_freshness(base, job, trust.load_root(trusted_root(base)[1], verify), dev_id, tick)
        fbody, floor = fresh
        offered = max(job["offered_at"], floor / 1000)
        trust.check_freshness(
            fbody,
            model,
            job["manifest"],
            body["counter"],
            offered,
            _trust_state(base)["freshness"],
            dev_id,
            job["id"],
        )
    return body, fbody


def _signed_freshness(base, job, root, dev_id, tick):
    """(the body of the job's freshness statement, signed by a threshold of
    the gateway role, the clock's floor, ms): a time statement kept on flash
    is verified first and raises the floor (docs/ota.md 2.3). Raises TrustError."""
    fraw, fbody, fsigs = trust.open_envelope(json.dumps(job["freshness"]).encode("utf-8"))
    trust.check_role(root, "gateway", fraw, fsigs, lambda k, m, s: verify(k, m, s, tick))
    floor = flash.floor_ms(base)
    if exists(base + "/" + flash.TIME):
        from .clock import take

        floor = take(base, dev_id, root, lambda k, m, s: verify(k, m, s, tick))
    return fbody, floor


def _install(base, job, device, running, now, fault, tick, partitions=None):
    _step[0] = "reading the manifest"
    run_set, run_counter, run_manifest = running
    with _staged_manifest(base, job) as f:
        body, fbody = check_release(base, job, device, run_counter, f, tick)
    if fbody is not None:
        state = _trust_state(base)  # (read again: the check may have raised the floor)
        state["freshness"] = fbody["version"]
        write_json(base + "/" + flash.TRUST_STATE, state)
        job["fresh_ok"] = body["counter"]
        flash.write_job(base, job)
    fault("verified")
    _step[0] = "choosing the files"
    from .forms import device_files

    listed = device_files(body["files"])
    counter = body["counter"]
    image = body.get("image")
    body = fbody = None  # the manifest's copies: RAM for the rest
    collect()
    _step[0] = "assembling the set"
    # the boot loader's code (the pointer, the slots' layout and their check)
    # only now, on the heap the signature check gave back
    loader = boot_loader()
    target = SLOTS[1] if run_set == SLOTS[0] else SLOTS[0]
    if _slot_manifest(base, target) != job["manifest"] or loader.check_set(base, target, listed) is not None:
        _assemble(base, target, listed, run_set, fault)
        bad = loader.check_set(base, target, listed)
        if bad is not None:
            raise TrustError("mismatch", "assembled set: " + bad)
    pointer = {
        "set": target,
        "prev": {"set": run_set or flash.FACTORY, "counter": run_counter, "manifest": run_manifest},
        "counter": counter,
        "manifest": job["manifest"],
        "state": "trial",
        "boots": 0,
        "update": job["id"],
    }
    part = None
    if image:
        # the image the download wrote, hashed again: it boots next, on
        # trial with the set (docs/ota.md 4.11)
        _step[0] = "checking the image"
        from .image import Refused, check_written

        try:
            part = check_written(partitions() if partitions else None, image)
        except Refused as exc:
            code, _, why = str(exc).partition(": ")  # ("mismatch: the image in ...")
            raise TrustError(code, why) from None
        pointer["image"] = part.info()[4]
        flash.note_image(base, pointer["image"], image["version"])
        now_on = partitions()  # (the image the set before runs on: the rollback's)
        pointer["prev"]["image"] = now_on(now_on.RUNNING).info()[4]
    fault("activate")
    loader.write_pointer(base, pointer)
    fault("activated")
    if part is not None:
        # after the pointer: a power cut between the two leaves the old
        # image running, which the boot loader takes for an image that did
        # not start (a rollback), never the new image with the old set
        part.set_boot()
        fault("image-boot")
    return pointer


def _slot_manifest(base, target):
    # hashed as it is read: no block of RAM as large as the manifest
    try:
        return files.file_sha256(boot_loader().set_manifest(base, target))[1]
    except OSError:
        return None


def _assemble(base, target, listed, run_set, fault):
    # what the running set holds is taken from it, as the need list counted it
    from .needs import held_copy, holdings

    loader = boot_loader()
    held, runtime = holdings(base, run_set)
    files.remove_tree(base + "/" + target)
    files.ensure_dir(loader.features_root(base, target))
    for f in listed:
        dst = loader.set_file(base, target, f["path"])
        files.ensure_dir(dst[: dst.rfind("/")])
        src = held_copy(f, held, runtime, base) or files.staged(base, f["sha256"])
        if files.size(src) != f["size"]:
            raise TrustError("mismatch", "%s is neither held nor staged" % f["path"])
        _copy(src, dst)
        fault("assemble")
    # written last: a slot with its manifest is a complete slot
    manifest = loader.set_manifest(base, target)
    _copy(files.staged(base, "manifest.json"), manifest + ".tmp")
    os.rename(manifest + ".tmp", manifest)


def _copy(src, dst):
    """Copy a file through one small buffer, synced."""
    buf = bytearray(512)
    mv = memoryview(buf)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while True:
            k = fi.readinto(buf)
            if not k:
                break
            fo.write(mv[:k])
        fsync(fo)


def check_job(agent, job, mpath):
    """The download agent's check of a staged manifest before any blob is
    fetched (pb/ota/download.py): its signatures and the offer's freshness
    statement (check_release), the board's image, then the need list
    written. Raises TrustError, ValueError, KeyError or TypeError."""
    from .. import API
    from .needs import list_needs

    with open(mpath, "rb") as f:
        body = check_release(
            agent.base, job, (agent.device, agent.model, agent.caps, API), agent.counter, f, agent.tick
        )[0]
    image = body.get("image")
    if image is not None and agent.partition() is None:
        raise TrustError("wrong_hardware", "this board cannot update its MicroPython image")
    list_needs(agent.base, job, body["files"], running(agent.base)[0], image)
