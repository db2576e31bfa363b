# Updates of the MicroPython image itself (docs/ota.md 4.11), through the
# board's OTA app partitions (esp32.Partition; on hosts the file-backed
# stand-in pb/hal/partitions.py). The image travels as one blob of
# segments, each compressed on its own behind a frame: 4 bytes of length
# (big-endian) and the SHA-256 of the compressed bytes. The agent fetches a
# segment to ota/stage/image.z, checks it, inflates it into the partition
# the board does not run, block by block, and records how far it got in the
# job: a power cut costs at most one segment. The whole image is then read
# back and hashed against the signed manifest; the install hashes it again
# before it chooses it to boot. Never held in RAM: one flash block at a time.
# Loaded only while an update carries an image.
from ..compat import collect, const, format_exception
from ..errors import TrustError
from . import files

FRAME = 36  # bytes before each segment: its compressed length, its SHA-256
BLOCK = 4096  # the flash's erase sector: what writeblocks() takes
STAGED = "image.z"  # the segment being fetched, in ota/stage/
_READ = 512  # bytes read or written at a time: no block-sized buffer in RAM
MAX_IMAGE = const(0x1000000)  # bytes of a MicroPython image: 16 MiB, the largest ESP32 flash
MAX_SEGMENT = const(65536)  # image bytes compressed on their own


def check_entry(image):
    """A manifest's `image` (docs/ota.md 2.1), for pb/ota/trust.py
    check_manifest. Raises TrustError bad_manifest."""
    if not isinstance(image, dict):
        raise TrustError("bad_manifest", "manifest field 'image' must be an object")
    v = image.get("version")
    if not isinstance(v, str) or not 0 < len(v) <= 32:
        raise TrustError("bad_manifest", "image: version must be 1-32 characters")
    for k in ("size", "zsize", "segment"):
        if not _int(image.get(k)) or not 0 < image[k] <= MAX_IMAGE:
            raise TrustError("bad_manifest", "image: %s must be a size from 1 to %d" % (k, MAX_IMAGE))
    seg = image["segment"]
    if seg % BLOCK or seg > MAX_SEGMENT:
        raise TrustError(
            "bad_manifest", "image: segment must be a multiple of %d up to %d" % (BLOCK, MAX_SEGMENT)
        )
    from .transfer import is_hex64

    if not is_hex64(image.get("sha256")) or not is_hex64(image.get("zsha256")):
        raise TrustError("bad_manifest", "image: hashes must be 64 lowercase hex")


def _int(x):
    return isinstance(x, int) and not isinstance(x, bool)


class Refused(Exception):
    """The image cannot be taken (the download fails with this reason)."""


def frame(head):
    """(compressed length, SHA-256 hex) from a frame's 36 bytes."""
    if len(head) != FRAME:
        raise Refused("mismatch: a frame of the image is %d bytes, not %d" % (len(head), FRAME))
    n = (head[0] << 24) | (head[1] << 16) | (head[2] << 8) | head[3]
    return n, files.hex_of(head[4:])


def target(partition):
    """The partition an update writes: the one after the running app."""
    if partition is None:
        raise Refused("wrong_hardware: this board cannot update its MicroPython image")
    return partition(partition.RUNNING).get_next_update()


def capacity(part):
    return part.ioctl(4, 0) * BLOCK


def written(part, image):
    """The SHA-256 hex of the image's bytes as they are in the partition."""
    import hashlib

    h = hashlib.sha256()
    buf = bytearray(_READ)
    at = 0
    n = image["size"]
    while at < n:
        part.readblocks(at // BLOCK, buf, at % BLOCK)  # (the extended protocol: any length)
        h.update(memoryview(buf)[: min(_READ, n - at)])
        at += _READ
    return files.hex_of(h.digest())


async def download(agent, uid, job, done, total, inflated):
    """fetch() for the agent; inflated: the agent's (pb/ota/download.py).
    Raises Refused (a flash error too)."""
    try:
        await fetch(agent, uid, job, agent.partition(), done, total, inflated)
    except OSError as exc:
        raise Refused("image: " + format_exception(exc)) from None


async def fetch(agent, uid, job, partition, done, total, inflated):
    """Bring the job's image into the partition not running, resuming from
    job["img"] ([image bytes written, blob bytes taken, the partition's
    label, checked]); done and total: the update's bytes for its status.
    Raises Refused."""
    image = job["image"]
    part = target(partition)
    if image["size"] > capacity(part):
        raise Refused("no_space: the image is %d bytes, the partition %d" % (image["size"], capacity(part)))
    label = part.info()[4]
    path = files.staged(agent.base, STAGED)
    at = job.get("img")
    if not at or at[2] != label:
        # from the start (a new job, or not the partition begun on): a
        # segment on flash is another job's
        files.remove(path)
        at = job["img"] = [0, 0, label, False]
    if at[3]:
        return
    seg = image["segment"]
    while at[0] < image["size"]:
        agent.report("downloading", uid, bytes=done + at[1], total=total, counter=job["counter"])
        if files.size(path) < FRAME:
            await agent.fetch(uid, job, [(image["zsha256"], image["zsha256"], path, FRAME, at[1])])
        with open(path, "rb") as f:
            n, sha = frame(f.read(FRAME))
        if n > image["zsize"] - at[1] - FRAME:
            files.remove(path)
            raise Refused("mismatch: a frame of the image runs past its end")
        if n > seg + seg // 16 + 64:  # (more than deflate makes of a segment at worst)
            files.remove(path)
            raise Refused("mismatch: a frame of the image is larger than a segment compresses to")
        await agent.fetch(uid, job, [(image["zsha256"], image["zsha256"], path, FRAME + n, at[1])])
        if files.file_sha256(path, n, FRAME) != (n, sha):
            files.remove(path)
            raise Refused("mismatch: the image's segment at byte %d is not the one sent" % at[0])
        want = min(seg, image["size"] - at[0])
        why = None
        try:
            got = _inflate_into(path, part, at[0] // BLOCK, want, inflated)
            if got != want:
                why = "is %d bytes, not %d" % (got, want)
        except (OSError, MemoryError):
            raise  # (a flash error; a short heap: update mode goes on after a reset)
        except Exception as exc:  # noqa: BLE001 - EOFError, ValueError, zlib.error: a broken stream
            why = "does not inflate (%s)" % type(exc).__name__
        finally:
            files.remove(path)  # (before the job moves on: a segment on flash is the job's next)
        if why:
            raise Refused("mismatch: the image's segment at byte %d %s" % (at[0], why))
        at[0] += want
        at[1] += FRAME + n
        agent.save_job()
        agent.fault("image-segment")
        collect()
    if written(part, image) != image["sha256"]:
        job["img"] = None
        agent.save_job()
        raise Refused("mismatch: the image written is not the one signed")
    at[3] = True  # (a resumed download does not hash it again)
    agent.save_job()


def _inflate_into(path, part, block, most, inflated):
    """Inflate the segment in path (after its frame) into part from block
    on: each block erased as the bytes reach it (ioctl 6), the bytes
    written as they come (the extended protocol, writeblocks with an
    offset). The bytes it inflated, or most + 1 once it would pass most."""
    buf = bytearray(_READ)
    mv = memoryview(buf)
    pos = block * BLOCK  # the next byte, from the partition's start
    erased = pos  # blocks before this one are erased
    end = pos + most
    with open(path, "rb") as fi:
        fi.seek(FRAME)
        for chunk in inflated(fi, buf, mv):
            c = len(chunk)
            if pos + c > end:
                return most + 1
            while erased < pos + c:
                part.ioctl(6, erased // BLOCK)
                erased += BLOCK
            part.writeblocks(pos // BLOCK, chunk, pos % BLOCK)
            pos += c
    return pos - block * BLOCK


def check_written(partition, image):
    """At the install: the partition to boot, holding the signed image. Raises Refused."""
    part = target(partition)
    if written(part, image) != image["sha256"]:
        raise Refused("mismatch: the image in %s is not the one signed" % part.info()[4])
    return part
