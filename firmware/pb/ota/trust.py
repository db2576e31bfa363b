# What the device trusts, as pure functions: roots and their rotation,
# threshold signatures over exact bytes, release manifests, freshness
# statements. No I/O. The ota tools on the maker's machine and the gateway
# import this same module, so they judge a release exactly as a device does.
#
# Signature checking is injected (verify(pub, msg, sig) -> bool): the device
# uses pb.ota.ed25519 (pure Python), the CPython tools may pass a faster one.
import json

from ..compat import const
from ..errors import TrustError

MAX_ENVELOPE = const(16384)
MAX_SENT_ROOT = const(4096)  # a root sent over the air: one MQTT message (pb/net/wire.py MAX_PACKET)
MAX_SIGNATURES = const(8)
MAX_FILES = const(64)  # what a 16 KB manifest holds
MAX_PATH = const(96)
RUNTIME = "pb"  # the runtime's folder in a release's paths (firmware/loader.py RUNTIME)
UPDATE_ID_LEN = const(12)  # an update id is this many lowercase hex digits
ROLES = ("root", "release", "gateway")


def is_hex(s, n):
    if not isinstance(s, str) or len(s) != n:
        return False
    for c in s.encode("utf-8", "replace"):  # (bytes: no character interned, pb/ids.py)
        if not (48 <= c <= 57 or 97 <= c <= 102):  # 0-9 a-f
            return False
    return True


def is_update_id(s):
    """True for an update id as the gateway makes them: 12 lowercase hex."""
    return is_hex(s, UPDATE_ID_LEN)


def sha256_hex(data):
    import hashlib

    return _hex(hashlib.sha256(data).digest())


def _hex(b):
    return "".join("%02x" % x for x in b)


def unhex(s):
    return bytes(int(s[i : i + 2], 16) for i in range(0, len(s), 2))


def key_id(pub):
    """The id of a raw 32-byte public key: its SHA-256, hex."""
    return sha256_hex(pub)


# ---- envelopes --------------------------------------------------------------


def open_envelope(data, parse=True):
    """(signed bytes, signed object, signatures) of an envelope's bytes, or
    of a list holding them, which it empties: the caller's copy then goes
    once it is parsed (a manifest of the whole runtime is some 11 KB, and a
    128 KB board checks it at boot beside the signature code), or of a file
    open for reading, parsed as it is read (its bytes never whole in RAM;
    the caller checked its size). On MicroPython the signed bytes are a
    memoryview of the signed string. parse=False: the signed object is
    None, for signed_object() once the signatures passed (the bytes and the
    object need not be in RAM with the signature code). Raises TrustError
    bad_envelope."""
    if isinstance(data, list):
        data = data.pop()
    if not hasattr(data, "read") and len(data) > MAX_ENVELOPE:
        raise TrustError("bad_envelope", "signed document of %d bytes exceeds %d" % (len(data), MAX_ENVELOPE))
    try:
        env = json.load(data) if hasattr(data, "read") else json.loads(data)
    except (ValueError, UnicodeError, RuntimeError):
        raise TrustError("bad_envelope", "signed document is not JSON") from None
    data = None
    if not isinstance(env, dict) or not isinstance(env.get("signed"), str):
        raise TrustError("bad_envelope", "signed document lacks its 'signed' string")
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or len(sigs) > MAX_SIGNATURES:
        raise TrustError("bad_envelope", "signatures must be a list of at most %d" % MAX_SIGNATURES)
    for s in sigs:
        if not isinstance(s, dict) or not is_hex(s.get("keyid"), 64) or not is_hex(s.get("sig"), 128):
            raise TrustError("bad_envelope", "a signature is not {keyid: 64 hex, sig: 128 hex}")
    # one copy of the signed text at a time (a manifest's is some KB): the
    # string goes before the object is parsed from its bytes
    raw = env["signed"]
    env = None
    try:
        # MicroPython views a string's UTF-8 bytes: no second copy of them
        raw = memoryview(raw)
    except TypeError:  # (CPython)
        raw = raw.encode("utf-8")
    return raw, signed_object(raw) if parse else None, sigs


def signed_object(raw):
    """The version 1 object of an envelope's signed bytes (or version 2: a
    release manifest with an image, which runtimes from before images
    refuse). Raises TrustError bad_envelope."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeError, RuntimeError):
        raise TrustError("bad_envelope", "signed content is not JSON") from None
    if not isinstance(body, dict):
        raise TrustError("bad_envelope", "signed content is not a version 1 object")
    v = body.get("v")
    if v != 1 and not (v == 2 and body.get("type") == "release" and "image" in body):
        raise TrustError("bad_envelope", "signed content is not a version 1 object")
    return body


def count_valid(raw, sigs, keys, keyids, verify, tick=None):
    """How many distinct keys of keyids made a valid signature over raw."""
    good = []
    for s in sigs:
        kid = s["keyid"]
        if kid in good or kid not in keyids or kid not in keys:
            continue
        if tick is not None:
            tick()
        if verify(unhex(keys[kid]), raw, unhex(s["sig"])):
            good.append(kid)
    return len(good)


def check_role(root, role, raw, sigs, verify, tick=None):
    """Raise unless a threshold of role's keys signed raw."""
    r = root["roles"][role]
    keyids = r["keyids"]
    n = count_valid(raw, sigs, root["keys"], keyids, verify, tick)
    if n >= r["threshold"]:
        return
    known = 0
    for s in sigs:
        if s["keyid"] in keyids:
            known += 1
    if not known:
        raise TrustError("unknown_key", "not signed by any %s key this device trusts" % role)
    raise TrustError("bad_signature", "%d of %d required %s signatures are valid" % (n, r["threshold"], role))


# ---- roots ------------------------------------------------------------------


def parse_root(body):
    """Check a root's content (not its signatures). Raises TrustError bad_root."""
    if body.get("type") != "root":
        raise TrustError("bad_root", "not a root document")
    version = body.get("version")
    keys = body.get("keys")
    roles = body.get("roles")
    if not _int(version) or version < 1 or not isinstance(keys, dict) or not isinstance(roles, dict):
        raise TrustError("bad_root", "root needs version >= 1, keys and roles")
    for kid in keys:
        pub = keys[kid]
        if not is_hex(pub, 64) or not is_hex(kid, 64) or key_id(unhex(pub)) != kid:
            raise TrustError("bad_root", "key id %s does not match its key" % str(kid)[:16])
    for role in ROLES:
        r = roles.get(role)
        if not isinstance(r, dict) or not isinstance(r.get("keyids"), list):
            raise TrustError("bad_root", "root lacks role %s" % role)
        t = r.get("threshold")
        if not _int(t) or t < 1 or t > len(r["keyids"]):
            raise TrustError("bad_root", "role %s: threshold must be 1..%d" % (role, len(r["keyids"])))
        seen = []
        for kid in r["keyids"]:
            if kid not in keys or kid in seen:
                raise TrustError("bad_root", "role %s lists an unknown or repeated key" % role)
            seen.append(kid)
    return body


def load_root(data, verify):
    """A root trusted on its own signatures (as provisioned). Raises TrustError."""
    raw, body, sigs = open_envelope(data)
    parse_root(body)
    check_role(body, "root", raw, sigs, verify)
    return body


def rotate_root(current, data, verify):
    """The next root, if current's root keys and its own both sign it and
    its version is exactly one more. Raises TrustError."""
    raw, body, sigs = open_envelope(data)
    parse_root(body)
    if body["version"] != current["version"] + 1:
        code = "rollback" if body["version"] <= current["version"] else "bad_root"
        raise TrustError(code, "root version %r cannot follow %r" % (body["version"], current["version"]))
    check_role(current, "root", raw, sigs, verify)
    check_role(body, "root", raw, sigs, verify)
    return body


# ---- manifests --------------------------------------------------------------

_PATH_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789_.-"


def check_path(path, features, runtime=False):
    """Raise bad_path unless path stays inside its feature's folder (or,
    for a release that carries a runtime, inside pb/)."""
    if not isinstance(path, str) or not 0 < len(path) <= MAX_PATH:
        raise TrustError("bad_path", "path must be 1-%d characters" % MAX_PATH)
    parts = path.split("/")
    if len(parts) < 2:
        raise TrustError("bad_path", "%r is not inside a feature folder" % path)
    for p in parts:
        if not p or p == "." or p == "..":
            raise TrustError("bad_path", "%r has an empty, '.' or '..' component" % path)
        for c in p.encode("utf-8", "replace"):  # (bytes: no character interned, pb/ids.py)
            if c not in _PATH_CHARS:
                raise TrustError("bad_path", "%r has a character outside a-z 0-9 _ . -" % path)
    if parts[0] not in features and not (runtime and parts[0] == RUNTIME):
        raise TrustError("bad_path", "%r is not in a feature of this release" % path)


def _int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def check_manifest(body):
    """The manifest's own consistency (not its signatures, not this device).
    Raises TrustError bad_manifest or bad_path."""
    if body.get("type") != "release":
        raise TrustError("bad_manifest", "not a release manifest")
    for name, kind in (
        ("model", str),
        ("version", str),
        ("features", dict),
        ("files", list),
        ("requires", list),
    ):
        if not isinstance(body.get(name), kind):
            raise TrustError("bad_manifest", "manifest field %r is missing or of the wrong type" % name)
    if not _int(body.get("counter")) or body["counter"] < 1 or not _int(body.get("api")):
        raise TrustError("bad_manifest", "manifest needs integer counter >= 1 and api")
    files = body["files"]
    if len(files) > MAX_FILES:
        raise TrustError("bad_manifest", "more than %d files" % MAX_FILES)
    feats = body["features"]
    # a release may carry the runtime: pb/ of the set, beside its features
    # (docs/ota.md 2.1); the boot loader runs it with them
    runtime = "runtime" in body
    if runtime and (not isinstance(body["runtime"], str) or not 0 < len(body["runtime"]) <= 32):
        raise TrustError("bad_manifest", "manifest field 'runtime' must be a version of 1-32 characters")
    if RUNTIME in feats:
        raise TrustError("bad_manifest", "no feature may be named %s" % RUNTIME)
    seen = {}  # type: dict[str, bool]
    prev = ""
    for f in files:
        if not isinstance(f, dict):
            raise TrustError("bad_manifest", "a file entry is not an object")
        check_path(f.get("path"), feats, runtime)
        for k in ("size", "zsize"):
            if not _int(f.get(k)) or f[k] < 0:
                raise TrustError("bad_manifest", "%s: %s must be a size" % (f["path"], k))
        if not is_hex(f.get("sha256"), 64) or not is_hex(f.get("zsha256"), 64):
            raise TrustError("bad_manifest", "%s: hashes must be 64 lowercase hex" % f["path"])
        if f["path"] <= prev:
            raise TrustError("bad_manifest", "files must be sorted by path, without repeats")
        prev = f["path"]
        feat = f["path"].split("/")[0]
        seen[feat] = seen.get(feat, False) or f["path"] == feat + "/manifest.json"
        if feat == RUNTIME and f["path"].startswith(RUNTIME + "/__init__."):
            seen[feat] = True
    if runtime and not seen.get(RUNTIME):
        raise TrustError("bad_manifest", "a release with a runtime needs %s/__init__" % RUNTIME)
    for name in feats:
        if not seen.get(name):
            raise TrustError("bad_manifest", "feature %s has no %s/manifest.json" % (name, name))
    if "image" in body:
        if body.get("v") != 2:
            raise TrustError("bad_manifest", "a release with an image is a version 2 manifest")
        from .image import check_entry  # (its code only for a release with an image)

        check_entry(body["image"])
    return body


def check_for_device(body, model, api, counter):
    """Raise unless the manifest suits this device: its model, its runtime
    API (unless the release carries its own runtime), and a counter above
    the one it runs. Its `requires` does not refuse it: a feature whose
    hardware the board lacks is installed and waits for it (pb/features.py,
    docs/ota.md 2)."""
    if body["model"] != model:
        raise TrustError("wrong_model", "release is for %s, this device is a %s" % (body["model"], model))
    # a release that carries a runtime runs its features on that runtime,
    # whose API ota build checked is the release's: the running one's API
    # does not matter (docs/ota.md 2.1)
    if "runtime" not in body and body["api"] != api:
        raise TrustError(
            "wrong_api", "release needs runtime API %r, this runtime has %r" % (body["api"], api)
        )
    if body["counter"] <= counter:
        raise TrustError(
            "rollback", "release counter %d is not above the installed %d" % (body["counter"], counter)
        )


def check_freshness(body, model, manifest_sha, counter, now, last_version, device, update):
    """Raise unless the statement is for this release, offered to this
    device as this update, unexpired, and not older than the last one this
    device accepted."""
    if body.get("type") != "freshness" or not _int(body.get("version")) or not _int(body.get("expires")):
        raise TrustError("bad_envelope", "not a freshness statement")
    if body.get("model") != model or body.get("manifest") != manifest_sha or body.get("counter") != counter:
        raise TrustError("mismatch", "freshness statement is for another release")
    if body.get("device") != device:
        raise TrustError("mismatch", "freshness statement is for another device")
    if not is_update_id(update) or body.get("update") != update:
        raise TrustError("mismatch", "freshness statement is for another update")
    if body["version"] < last_version:
        raise TrustError("freeze", "freshness statement is older than one already seen")
    if now > body["expires"]:
        raise TrustError("freeze", "freshness statement expired %d s ago" % int(now - body["expires"]))


# ---- time statements (docs/ota.md 2.3) ----------------------------------------


def check_time(body, device):
    """The gateway's time (ms) that a time statement's content states for
    this device. Raises TrustError."""
    t = body.get("time")
    if body.get("type") != "time" or not _int(t) or t < 0:
        raise TrustError("bad_envelope", "not a time statement")
    if body.get("device") != device:
        raise TrustError("mismatch", "time statement is for another device")
    return t
