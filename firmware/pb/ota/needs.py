# What a device lacks of a release (docs/ota.md 4.3): the files of its form
# that the running set does not hold, written as the need list once the
# manifest's signatures passed, so that update mode reads a line at a time
# and never the whole manifest; and where the running set holds the rest,
# which the install takes from there. Loaded after a check that passed and
# at assembly only.
import json
import os

from ..store import write_atomic
from . import files, flash
from .flash import boot_loader


def list_needs(base, job, listed, run_set, image=None):
    """After a check that passed: the need list (flash.NEED) of the files
    of listed (the manifest's) of this device's form that the running set
    (run_set: its folder, None for none) does not hold, as the install will
    take them (held_copy), with the flash the download needs and the bytes
    it fetches; then staging keeps only the manifest, the list and what it
    names (docs/ota.md 4.3). Update mode reads the list, never the
    manifest; image: the manifest's, if it carries one, which the head
    keeps for update mode. Raises TrustError (wrong_form), StoreError."""
    from .forms import device_files

    listed = device_files(listed, whole=False)
    held, runtime = holdings(base, run_set)
    needed = {}
    need = 4096  # flash kept free
    total = 0
    for f in listed:
        need += f["size"]
        if f["sha256"] not in needed and held_copy(f, held, runtime, base) is None:
            needed[f["sha256"]] = f
            need += f["zsize"] + f["size"]
            total += f["zsize"]
    head = {"manifest": job["manifest"], "id": job["id"], "need": need, "total": total}
    if image is not None:
        head["image"] = image
        head["total"] += image["zsize"]
        head["need"] += 2 * image["segment"]  # one segment staged at a time (pb/ota/image.py)
    write_atomic(base + "/" + flash.NEED, _lines(head, needed.values()))
    _keep_only(files.staged(base) + "/", needed)


def _lines(head, entries):
    # the need list's format (read by pb/ota/download.py read_need): its head,
    # then each entry as the manifest has it, one JSON object a line, streamed
    yield json.dumps(head).encode("utf-8") + b"\n"
    for f in entries:
        yield json.dumps(f).encode("utf-8") + b"\n"


def _keep_only(stage, needed):
    """Remove from the staging folder what no needed file names (a blob of
    an update replaced, a stray file): staging holds the manifest, the need
    list and, per file the device lacks, at most its blob and its inflated copy."""
    need = flash.NEED[len(flash.STAGE) + 1 :]
    for name in os.listdir(stage[:-1]):
        if name in ("manifest.json", need, need + ".tmp", "image.z"):
            continue
        sha = name.split(".")[0]
        if sha in needed and name in (sha, sha + ".z", sha + ".tmp"):
            continue
        files.remove_tree(stage + name)


def holdings(base, run_set):
    """What the running set holds for a new one: ({sha256: path} of its
    features' files, the folder of the runtime it runs)."""
    loader = boot_loader()
    held = files.held_files(loader.features_root(base, run_set) if run_set else None)
    return held, loader.runtime_root(base, run_set) if run_set else base


def held_copy(f, held, runtime, base):
    """Where the running set holds the content of file f, or None: a file of
    its features with f's SHA-256 (held), or, for a module of the
    runtime, the same path in the runtime it runs, hashed here (a dict of
    every runtime module would cost a 128 KB board its RAM at assembly); a
    board file, pb/boards/<board>.json, may be the provisioned boards/<board>.json
    (base: the device's folder)."""
    path = held.get(f["sha256"])
    if path is None and f["path"].startswith(boot_loader().RUNTIME + "/"):
        p = runtime + "/" + f["path"]
        if f["path"].startswith(flash.RUNTIME_BOARDS + "/") and files.size(p) < 0:
            p = base + "/" + f["path"][3:]  # (the board file provisioned: boards/)
        if files.size(p) == f["size"] and files.file_sha256(p, f["size"])[1] == f["sha256"]:
            path = p
    return path
