# The trusted root, taken at boot (docs/ota.md 1.1): a root provisioned
# (ota/root.json) becomes the trusted root of its version; a root the gateway
# sent (ota/root.next.json, kept by the runtime as it came) is trusted only if
# the current root's keys and its own sign it and its version is the next
# one. Runs in pb/prepare.py on a nearly empty heap, before an install, so
# that the install checks with the newest root. Every step is repeated
# after a power cut: the old root stays trusted until the new one is whole.
import os

from ..errors import StoreError, TrustError
from ..store import exists, read_bytes, write_atomic
from . import flash


def root_versions(base):
    """The versions of the trusted roots on flash (ota/root.<version>.json),
    highest first; a torn write (.tmp) is not one."""
    found = []  # type: list[int]
    try:
        names = os.listdir(base + "/ota")
    except OSError:
        return found
    for name in names:
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "root" and parts[2] == "json" and parts[1].isdigit():
            found.append(int(parts[1]))
    found.sort()
    found.reverse()
    return found


def trusted_root(base):
    """(version, bytes) of the root the device trusts: the highest version
    on flash; (0, the provisioned root.json or None) before the first boot
    has taken it."""
    for v in root_versions(base):
        try:
            with open(base + "/" + flash.ROOTS % v, "rb") as f:
                return v, f.read()
        except OSError:
            continue
    return 0, read_bytes(base + "/" + flash.ROOT)


def root_waits(base):
    """True if a boot has a root to take: one provisioned or one sent."""
    return exists(base + "/" + flash.ROOT) or exists(base + "/" + flash.ROOT_NEXT)


def write_root(base, version, data):
    """Trust the root data (checked by the caller) of version: written under
    a new name, so a power cut leaves the old root or both; then the older
    ones go. Raises StoreError."""
    write_atomic(base + "/" + flash.ROOTS % version, data)
    for v in root_versions(base):
        if v < version:
            flash.remove(base + "/" + flash.ROOTS % v)


def settle(base, now, fault=None):
    """Take what ota/ holds of roots; the version trusted after it."""
    version, data = trusted_root(base)
    given = read_bytes(base + "/" + flash.ROOT)
    if given is not None:
        version, data = _provisioned(base, version, data, given)
        if fault is not None:
            fault("root_provisioned")
        flash.remove(base + "/" + flash.ROOT)
    sent = read_bytes(base + "/" + flash.ROOT_NEXT)
    if sent is None:
        return version
    if sent == data:  # taken already: the power went before the file was removed
        flash.remove(base + "/" + flash.ROOT_NEXT)
        return version
    from . import trust
    from .ed25519 import verify

    reason = None
    try:
        if data is None:
            raise TrustError("bad_root", "this device trusts no root to check it with")
        new = trust.rotate_root(trust.load_root(data, verify), sent, verify)
        write_root(base, new["version"], sent)
        version = new["version"]
        if fault is not None:
            fault("root_rotated")
    except TrustError as exc:
        reason = "%s: %s" % (exc.code, exc.message)
    except StoreError as exc:
        reason = "storage: %s" % exc
    if reason is not None:
        from .report import status

        flash.boot_loader().add_report(base, status("-", "failed", 0, "root refused: " + reason, ts=now))
        try:  # the runtime does not take these bytes again
            write_atomic(base + "/" + flash.ROOT_REFUSED, trust.sha256_hex(sent).encode())
        except StoreError:
            pass
    flash.remove(base + "/" + flash.ROOT_NEXT)
    return version


def _provisioned(base, version, data, given):
    """(version, bytes) trusted once the provisioned root is taken: it
    replaces the trusted one unless that one is newer (a device that rotated
    keeps its root when provisioned again with an older one)."""
    from . import trust

    try:
        body = trust.parse_root(trust.open_envelope(given)[1])
    except TrustError:
        return version, data  # not a root: the device keeps what it trusts
    if body["version"] < version or body["version"] == version and given == data:
        return version, data
    write_root(base, body["version"], given)
    return body["version"], given
