# The boot guard: which feature set to run. The pointer file ota/active.json
# names the running set; it changes only by one atomic rename, so after any
# power cut it names either the old set or the new one, never a mix. A set in
# trial that keeps failing to commit is replaced by the previous one; with no
# usable set the device runs in safe mode (no features).
#
# Used at boot only: the runtime lets this module go once the set is chosen.
# decide() answers (root, pointer, trial, report): the feature folder to run
# (None: safe mode), the pointer record (None: factory set), whether this
# boot is a trial, and an update status to tell the gateway, or None.
import json

from ..compat import collect, format_exception
from ..store import read_bytes
from . import flash
from .files import file_sha256, is_dir
from .flash import FACTORY, read_pointer, write_pointer

MAX_TRIAL_BOOTS = 3


def features_root(base, set_dir):
    """The feature folder of a set: the factory set, or a slot's features/."""
    return base + "/" + (set_dir if set_dir == FACTORY else set_dir + "/features")


def set_manifest(base, set_dir):
    """The manifest kept with a slot (written last: a slot with it is complete)."""
    return base + "/" + set_dir + "/manifest.json"


def check_set(base, set_dir, files=None):
    """None if every file of an OTA set matches the manifest stored with it
    (or the files given, from that manifest), else the reason. The factory
    set has no manifest and is not checked. Raises MemoryError: a heap too
    small says nothing about the set."""
    if set_dir == FACTORY:
        return None if is_dir(base + "/" + FACTORY) else "factory set missing"
    try:
        if files is None:
            files = set_files(base, set_dir)
            if files is None:
                return "set %s has no manifest" % set_dir
        for f in files:
            n, digest = file_sha256(features_root(base, set_dir) + "/" + f["path"], f["size"])
            if n != f["size"] or digest != f["sha256"]:
                return "%s does not match its manifest" % f["path"]
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything wrong with the set makes it unusable
        return "set %s unreadable: %s" % (set_dir, format_exception(exc))
    return None


def set_files(base, set_dir):
    """The files of the manifest kept with an OTA set that this device
    installed (of each module, its form), or None."""
    data = read_bytes(set_manifest(base, set_dir))
    if data is None:
        return None
    signed = json.loads(data)["signed"]
    data = None
    collect()
    from .forms import device_files

    return device_files(json.loads(signed)["files"])


def _restore(base, p, reason):
    prev = p.get("prev")
    if not prev or check_set(base, prev["set"]) is not None:
        return None
    q = {
        "set": prev["set"],
        "counter": prev["counter"],
        "manifest": prev.get("manifest"),
        "state": "committed",
    }
    write_pointer(base, q)
    return q


def decide(base=".", fault=None):
    """Choose the feature set for this boot (and record a trial boot)."""
    p = read_pointer(base)
    factory = is_dir(base + "/" + FACTORY)
    if p is None or p.get("corrupt"):
        if factory:
            st = _status("failed", "pointer corrupt; factory set used") if p else None
            if st:
                flash.add_report(base, st)
            return (features_root(base, FACTORY), None, False, st)
        return _safe("no usable feature set (%s)" % ("pointer corrupt" if p else "none installed"), base)
    if p.get("state") == "trial":
        p["boots"] = p.get("boots", 0) + 1
        write_pointer(base, p)  # counted before anything of the new set runs
        if fault is not None:
            fault("trial-boot")
        if p["boots"] > MAX_TRIAL_BOOTS:
            reason = "trial did not commit in %d boots" % MAX_TRIAL_BOOTS
            why = _last_failure(base, p)
            if isinstance(why, str):
                reason += "; the last " + why
        else:
            reason = check_set(base, p["set"])
        if reason is None:
            return (features_root(base, p["set"]), p, True, None)
        q = _restore(base, p, reason)
        if q is None:
            return _safe("trial failed (%s) and the previous set is unusable" % reason, base)
        st = _status("rolled_back", reason, p)
        flash.add_report(base, st)
        return (features_root(base, q["set"]), q, False, st)
    if p["set"] == FACTORY and not factory:
        return _safe("factory set missing", base)
    return (features_root(base, p["set"]), p, False, None)


def _last_failure(base, p):
    """What ended the last trial boot, or None: the crash the runtime kept
    as it reset (data/state.json, pb/start.py; a feature's MemoryError names
    the feature and the step, pb/features.py), else what the trial kept with
    the pointer (pb/ota/trial.py)."""
    try:
        st = json.loads(read_bytes(base + "/" + flash.STATE))
        if st["reset_request"] == "crash":
            return "ended by " + st["last_crash"]
    except Exception:  # noqa: BLE001 - no record of a crash: nothing to add
        pass
    return p.get("error")


def _status(state, reason, p=None):
    from .report import status  # (only when something went wrong)

    if p is None:
        return status("-", state, 0, reason)
    return status(p.get("update") or "-", state, p.get("counter", 0), reason)


def _safe(reason, base=None):
    st = _status("safe_mode", reason)
    if base is not None:
        flash.add_report(base, st)
    return (None, None, False, st)


def rollback(base, p, reason):
    """Give up a trial now: back to the previous set. None if there is none
    usable (the caller then goes to safe mode)."""
    return _restore(base, p, reason)
