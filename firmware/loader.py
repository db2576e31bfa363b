# The boot loader (docs/ota.md 4.5): which set, a runtime and its features,
# this boot runs; trial boots counted, rollback, safe mode. No update changes
# it, so it imports nothing of pb/ (the runtime it chooses may be a slot's).
# The pointer ota/active.json changes by one atomic rename only: after any
# power cut it names the old set or the new one, never one's runtime with
# the other's features. boot() returns (features, pointer, trial, report),
# the shape every runtime's pb.start.run takes, and puts the set's runtime
# first on sys.path: the slot's pb/, else the factory pb/ beside this file.
import json
import os
import sys

MAX_TRIAL_BOOTS = 3
FACTORY = "features"  # the factory set: features/ and the factory pb/
RUNTIME = "pb"  # a set's runtime, in a slot as in the device's root folder
POINTER = "ota/active.json"  # the set that runs
REPORTS = "ota/reports.json"  # statuses for the runtime to send
STATE = "data/state.json"  # the runtime's state record: reset request, last crash
JOB = "ota/job.json"  # the update under way
MAX_REPORTS = 8
_OTHER = ".py" if sys.implementation.name == "micropython" else ".mpy"  # the form it does not run


def write_json(path, value):
    """A .tmp synced, renamed over path (FAT: removed first; read_json takes the .tmp)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(json.dumps(value).encode("utf-8"))
        f.flush()
        if hasattr(os, "fsync"):
            os.fsync(f.fileno())
    try:
        os.rename(tmp, path)
    except OSError:
        os.remove(path)
        os.rename(tmp, path)


def read_json(path, absent=None, bad=None):
    """The JSON in path (or its pending .tmp), else absent (none) or bad (not JSON)."""
    for name in (path, path + ".tmp"):
        try:
            with open(name, "rb") as f:
                return json.loads(f.read())
        except OSError:
            pass
        except ValueError:
            return bad
    return absent


def read_pointer(base):
    """The pointer; None: none (factory set); {"corrupt": True}: unreadable."""
    p = read_json(base + "/" + POINTER, False)
    if p is False:
        return None
    return p if isinstance(p, dict) and isinstance(p.get("set"), str) else {"corrupt": True}


def write_pointer(base, p):
    write_json(base + "/" + POINTER, p)


def add_report(base, status):
    """Keep a status for the runtime to send; a full flash loses it, not the boot."""
    reports = read_json(base + "/" + REPORTS)
    reports = (reports if isinstance(reports, list) else [])[1 - MAX_REPORTS :] + [status]
    try:
        if not _is_dir(base + "/ota"):
            os.mkdir(base + "/ota")
        write_json(base + "/" + REPORTS, reports)
    except OSError:
        pass


def _is_dir(path):
    try:
        return bool(os.stat(path)[0] & 0x4000)
    except OSError:
        return False


def features_root(base, set_dir):
    """The feature folder of a set: the factory set, or a slot's features/."""
    return base + "/" + (set_dir if set_dir == FACTORY else set_dir + "/features")


def runtime_root(base, set_dir):
    """The folder whose pb/ a set runs: a slot carrying one, else the root."""
    slot = base + "/" + set_dir
    return slot if set_dir != FACTORY and _is_dir(slot + "/" + RUNTIME) else base


def set_file(base, set_dir, path):
    """Where a file of a release lies in a slot: pb/... or features/..."""
    if path.startswith(RUNTIME + "/"):
        return base + "/" + set_dir + "/" + path
    return features_root(base, set_dir) + "/" + path


def set_manifest(base, set_dir):
    """The manifest kept with a slot (written last: a slot with it is complete)."""
    return base + "/" + set_dir + "/manifest.json"


def check_set(base, set_dir, files=None):
    """None if a slot's files (of this interpreter's form, or those given) match
    its manifest, else why. Raises MemoryError: it says nothing of the set."""
    if set_dir == FACTORY:
        return None if _is_dir(base + "/" + FACTORY) else "factory set missing"
    import hashlib

    try:
        if files is None:
            m = read_json(set_manifest(base, set_dir))
            if m is None:
                return "set %s has no manifest" % set_dir
            files = [f for f in json.loads(m["signed"])["files"] if not f["path"].endswith(_OTHER)]
        buf = bytearray(512)
        for f in files:
            h = hashlib.sha256()
            n = 0
            with open(set_file(base, set_dir, f["path"]), "rb") as fi:
                k = fi.readinto(buf)
                while k and n <= f["size"]:  # (a file longer than signed: read no further)
                    n += k
                    h.update(memoryview(buf)[:k])
                    k = fi.readinto(buf)
            if n != f["size"] or "".join("%02x" % x for x in h.digest()) != f["sha256"]:
                return "%s does not match its manifest" % f["path"]
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything wrong with the set makes it unusable
        return "set %s unreadable: %s: %s" % (set_dir, type(exc).__name__, exc)
    return None


def _report(base, state, reason, p=None):
    """Keep a status (of pb/ota/report.py's shape) for the runtime to send."""
    p = p or {}
    st = {"v": 1, "id": p.get("update") or "-", "state": state, "counter": p.get("counter", 0)}
    st["reason"] = reason
    add_report(base, st)
    return st


def _safe(base, reason):
    return (None, None, False, _report(base, "safe_mode", reason))


def rollback(base, p, reason):
    """Back to the previous set, runtime and features, by one rename; None if unusable."""
    prev = p.get("prev")
    if not prev or check_set(base, prev["set"]) is not None:
        return None
    q = {"set": prev["set"], "counter": prev["counter"], "manifest": prev.get("manifest")}
    q["state"] = "committed"
    if prev.get("image"):
        q["image"] = prev["image"]  # (the image that set runs on)
    write_pointer(base, q)
    return q


def _reset():
    """Reset the board now (on the unix port: end, for main.py's supervisor
    to start the device again)."""
    if sys.platform != "linux":
        import machine

        machine.reset()
    sys.exit(75)


def _installing(job, p):
    return isinstance(job, dict) and job.get("id") == p.get("update")


def decide(base=".", image=None, reset=None):
    """This boot's set; a trial boot is counted on flash before any of it
    runs. image: the running image's partition (a set on trial with an
    image of its own runs on that one only); reset(): the board's (the
    simulator's own, which does not end the process)."""
    p = read_pointer(base)
    factory = _is_dir(base + "/" + FACTORY)
    if p is None or p.get("corrupt"):
        if not factory:
            return _safe(base, "no usable feature set (%s)" % ("pointer corrupt" if p else "none installed"))
        st = _report(base, "failed", "pointer corrupt; factory set used") if p else None
        return (features_root(base, FACTORY), None, False, st)
    reason = None
    if p.get("state") == "trial":
        p["boots"] = p.get("boots", 0) + 1
        write_pointer(base, p)  # counted before anything of the new set runs
        if p["boots"] > MAX_TRIAL_BOOTS:
            reason = "trial did not commit in %d boots" % MAX_TRIAL_BOOTS
            st = read_json(base + "/" + STATE)
            if isinstance(st, dict) and st.get("reset_request") == "crash":
                reason += "; the last ended by %s" % st.get("last_crash")
            elif isinstance(p.get("error"), str):
                reason += "; the last " + p["error"]  # kept by a rollback short of RAM
        elif p.get("image") and p["image"] != image and not _installing(read_json(base + "/" + JOB), p):
            # the bootloader went back: the new image never marked itself
            # valid (while its install's job is on flash, the install has
            # yet to choose it, at this boot)
            reason = "the new MicroPython image did not start (%s runs)" % image
        else:
            reason = check_set(base, p["set"])
        if reason is None:
            return (features_root(base, p["set"]), p, True, None)
    elif p.get("image") and image and p["image"] != image:
        # committed, and the bootloader went back all the same: the power
        # went before the new image was marked valid
        reason = "the new MicroPython image was not marked valid (%s runs)" % image
    if reason is not None:
        q = rollback(base, p, reason)
        if q is None:
            return _safe(base, "trial failed (%s) and the previous set is unusable" % reason)
        st = _report(base, "rolled_back", reason, p)
        if image and p.get("image") == image:
            (reset or _reset)()  # the new image runs, never marked valid: the bootloader takes it back
        return (features_root(base, q["set"]), q, False, st)
    if p["set"] == FACTORY and not factory:
        return _safe(base, "factory set missing")
    return (features_root(base, p["set"]), p, False, None)


def boot(base="."):  # decide(), and the chosen set's runtime first on sys.path
    try:  # the file of the command repl.open (protocol.md 4.13): this boot is the REPL's
        os.remove(base + "/" + "repl")
    except OSError:
        pass
    else:  # main.py stops as at Ctrl-C (the unix port's parent runs the REPL: supervisor.py)
        if sys.platform == "linux":
            sys.exit(76)
        raise KeyboardInterrupt
    # the app partition running (its MicroPython image): esp32.Partition, or
    # on a host the stand-in bootloader's choice (main.py's supervisor)
    try:
        import esp32

        # (the stubs take only a label; the firmware takes RUNNING and BOOT too)
        image = esp32.Partition(esp32.Partition.RUNNING).info()[4]  # type: ignore[arg-type]
    except ImportError:
        image = os.getenv("PB_IMAGE")
    chosen = decide(base, image)
    folder = runtime_root(base, chosen[1]["set"]) if chosen[1] else base
    if folder != base:
        sys.path.insert(0, folder[2:] if folder.startswith("./") else folder)
    return chosen
