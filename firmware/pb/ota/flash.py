# The device's flash as the update path keeps it (docs/ota.md 4.8): every
# path, the format of every record, and the one writer of the active-set
# pointer. Paths are relative to the device's root folder (base); every
# record is JSON replaced in one step (pb/store.py), so a power cut leaves the
# old record or the new one; a record that is not JSON reads as absent.
# Loaded by the update path only while it runs.
import json
import os

from ..store import read_bytes, write_atomic

# What the boot loader (firmware/loader.py) owns and cannot import from pb/,
# which an update replaces: the same values, checked equal by
# tests/firmware/test_loader.py. Its pointer writer, report keeper and set
# check are reached through boot_loader(), which loads it only where used.
FACTORY = "features"  # the factory set, run when there is no pointer
POINTER = "ota/active.json"  # the set that runs
REPORTS = "ota/reports.json"  # statuses for the runtime to send
CONFIG = "config.json"  # the device's settings (pb/config.py)
PROVISIONING = "provisioning.json"  # a copy over USB under way (main.py is off the board meanwhile)
CONFIG_CHECKED = "data/config.ok"  # digest of the runtime's version and the config that passed
BOARDS = "boards"  # boards/<board>.json
RUNTIME_BOARDS = "pb/boards"  # a slot's runtime's board files: <slot>/pb/boards/<board>.json
DATA = "data"  # the runtime's records (pb/store.py Store)
HELLO = "data/hello.json"  # the last hello the runtime sent, for update mode
ROOT = "ota/root.json"  # a root provisioned: taken as the trusted root at the next boot
ROOTS = "ota/root.%d.json"  # the trusted root, by its version (the highest one on flash)
ROOT_NEXT = "ota/root.next.json"  # a root the gateway sent, checked at the next boot
ROOT_REFUSED = "ota/root.refused"  # SHA-256 (hex) of the last root the device refused
TRUST_STATE = "ota/trust.json"  # {"freshness": last version accepted, "time": the floor}
TIME = "ota/time.json"  # the gateway's latest time statement, not yet verified (pb/ota/clock.py)
OFFER = "ota/offer.json"  # an offer handed to update mode
JOB = "ota/job.json"  # the update under way
STAGE = "ota/stage"  # manifest.json, need.json, <sha256>.z, <sha256>.tmp, <sha256>
NEED = "ota/stage/need.json"  # what the check found this device lacks (pb/ota/needs.py)
SLOTS = ("ota/a", "ota/b")  # manifest.json, features/ and, from a release that carries one, pb/
LAST_STATUS = "ota/status.json"  # the last outcome (pb/ota/report.py KEPT)
IMAGES = "ota/images.json"  # {app partition: version} of the images releases wrote (pb/hello.py)


def read_pointer(base):
    """The pointer record, as the boot loader reads it (its read_pointer),
    without loading the loader: None (factory set), or {"corrupt": True}."""
    data = read_bytes(base + "/" + POINTER)
    if data is None:
        return None
    try:
        p = json.loads(data)
    except ValueError:
        p = None
    return p if isinstance(p, dict) and isinstance(p.get("set"), str) else {"corrupt": True}


def note_image(base, label, version):
    """Record that partition label holds the image of that version (the
    hello's ota.image), before it is chosen to boot."""
    known = read_json(base + "/" + IMAGES)
    known = known if isinstance(known, dict) else {}
    known[label] = version
    write_json(base + "/" + IMAGES, known)


def boot_loader():
    """The boot loader's module: the pointer's reader and one writer
    (read_pointer, write_pointer, rollback), and add_report."""
    try:
        import loader
    except ImportError:  # CPython with the firmware as a package (simulator, tools)
        loader = __import__("firmware.loader").loader  # (firmware/ as a package)
    return loader


def read_json(path):
    """The JSON value in path (or its pending replacement), or None if it is
    absent or not JSON."""
    data = read_bytes(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def write_json(path, value):
    """Replace path's content with value as JSON, in one step. Raises StoreError."""
    write_atomic(path, json.dumps(value).encode("utf-8"))


def to_check(job):
    """True for a job whose manifest update mode fetched and the boot has
    not checked yet (pb/ota/install.py check_fetched)."""
    return job.get("verify") == "boot" and job.get("checked") != job.get("manifest")


def floor_ms(base):
    """The clock's floor: the highest gateway time this device verified, ms
    (0: none), from TRUST_STATE (docs/ota.md 2.3, pb/ota/clock.py)."""
    s = read_json(base + "/" + TRUST_STATE)
    t = s.get("time") if isinstance(s, dict) else None
    return t if isinstance(t, int) and not isinstance(t, bool) and t > 0 else 0


def remove(path):
    """Remove path and its pending replacement; a missing one is fine."""
    for p in (path, path + ".tmp"):
        try:
            os.remove(p)
        except OSError:
            pass


# ---- the pointer (docs/ota.md 4.4) ---------------------------------------------


def commit_of(base, p):
    """The commit of a set on trial, prepared: (path, bytes) that
    store.write_atomic writes when the trial passes. Prepared when the trial
    starts, on a young heap: one the new set has used may lack the blocks
    this module needs to load."""
    q = dict(p)
    q["state"] = "committed"
    q.pop("boots", None)
    q.pop("error", None)
    return base + "/" + POINTER, json.dumps(q).encode("utf-8")


# ---- the job (docs/ota.md 4.8) ----------------------------------------------------


def read_job(base, phase=None):
    """The job (in a phase: "downloading", "staged"), or None."""
    job = read_json(base + "/" + JOB)
    if not isinstance(job, dict) or phase is not None and job.get("phase") != phase:
        return None
    return job


def write_job(base, job):
    write_json(base + "/" + JOB, job)


def remove_job(base):
    remove(base + "/" + JOB)


def lean_job(base):
    """True if a download waits to run in update mode: an offer handed over,
    or a download marked lean."""
    if read_bytes(base + "/" + OFFER) is not None:
        return True
    job = read_job(base, "downloading")
    return job is not None and job.get("mode") == "lean"


# ---- statuses kept for the gateway ---------------------------------------------


def take_reports(base):
    """The statuses kept by add_report, oldest first; they go."""
    path = base + "/" + REPORTS
    reports = read_json(path)
    remove(path)
    return reports if isinstance(reports, list) else []
