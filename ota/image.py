"""MicroPython images in a release (docs/ota.md 2.1 and 4.11).

A release may carry the board's whole MicroPython image (the app a board's
OTA partitions hold, as ``esptool`` would flash it). It ships as one blob,
``blobs/<sha256 of the image>.z``, made of segments: every ``segment`` bytes
of the image compressed on their own (zlib, the 2^10-byte window a device
inflates with), each behind a 36-byte frame: the compressed length (4 bytes,
big-endian) and the SHA-256 of the compressed bytes. A device fetches and
checks one segment at a time and writes it into the partition it does not
run, so a power cut costs at most one segment and the image is never held
in RAM (firmware/pb/ota/image.py). The manifest's ``image`` entry, signed
with the rest, names the image's size and SHA-256 and the blob's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware.pb.errors import TrustError
from firmware.pb.ota import image as device_image

from .errors import BuildError, ReleaseError

FRAME = 36
SEGMENT = 32768  # a segment's image bytes: at most some 20 KB staged on flash at a time
ESP_IMAGE_MAGIC = 0xE9  # the first byte of every ESP32 app image
_MAX_VERSION = 32


@dataclass(frozen=True)
class ImageEntry:
    """The manifest's ``image``: the image (size, sha256), its blob (zsize,
    zsha256), the segment size and the MicroPython version it is."""

    version: str
    size: int
    sha256: str
    zsize: int
    zsha256: str
    segment: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageEntry:
        return cls(d["version"], d["size"], d["sha256"], d["zsize"], d["zsha256"], d["segment"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "zsize": self.zsize,
            "zsha256": self.zsha256,
            "segment": self.segment,
        }


def _compress(data: bytes) -> bytes:
    from .release import compress

    return compress(data)


def pack(data: bytes, segment: int = SEGMENT) -> bytes:
    """The blob of an image: each segment compressed behind its frame."""
    out = bytearray()
    for at in range(0, len(data), segment):
        z = _compress(data[at : at + segment])
        out += len(z).to_bytes(4, "big") + hashlib.sha256(z).digest() + z
    return bytes(out)


def entry(image: Path, version: str, segment: int = SEGMENT) -> tuple[ImageEntry, bytes]:
    """The manifest entry and the blob of the image file. Raises BuildError."""
    if not isinstance(version, str) or not 0 < len(version) <= _MAX_VERSION or not version.isprintable():
        raise BuildError(f"the image's version must be 1-{_MAX_VERSION} printable characters")
    try:
        data = Path(image).read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read the image {image}: {exc.strerror}") from exc
    if not data or data[0] != ESP_IMAGE_MAGIC:
        raise BuildError(
            f"{image} is not an ESP32 app image (its first byte is not 0x{ESP_IMAGE_MAGIC:02X}):"
            " give the application binary (firmware.bin of a board built with an OTA partition table)"
        )
    blob = pack(data, segment)
    e = ImageEntry(
        version,
        len(data),
        hashlib.sha256(data).hexdigest(),
        len(blob),
        hashlib.sha256(blob).hexdigest(),
        segment,
    )
    try:
        device_image.check_entry(e.to_dict())
    except TrustError as exc:
        raise BuildError(f"the image would not pass a device: {exc.message}") from exc
    return e, blob


def unpack(blob: bytes, e: ImageEntry) -> bytes:
    """The image a blob holds, checked as a device checks it: each frame's
    hash, each segment's size, then the whole image's. Raises ReleaseError."""
    import zlib

    from .release import ZLIB_WBITS

    if len(blob) != e.zsize or hashlib.sha256(blob).hexdigest() != e.zsha256:
        raise ReleaseError("mismatch", "image: the blob is not the one signed (size or SHA-256)")
    out = bytearray()
    at = 0
    while at < len(blob):
        head = blob[at : at + FRAME]
        n = int.from_bytes(head[:4], "big") if len(head) == FRAME else -1
        z = blob[at + FRAME : at + FRAME + n]
        if n < 0 or len(z) != n or hashlib.sha256(z).digest() != head[4:]:
            raise ReleaseError("mismatch", f"image: the frame at byte {at} of the blob is broken")
        d = zlib.decompressobj(ZLIB_WBITS)
        try:
            seg = d.decompress(z, e.segment + 1)
        except zlib.error as exc:
            raise ReleaseError(
                "mismatch", f"image: the segment at byte {at} does not inflate: {exc}"
            ) from exc
        want = min(e.segment, e.size - len(out))
        if len(seg) != want or not d.eof or d.unused_data:
            raise ReleaseError("mismatch", f"image: the segment at byte {at} is not {want} bytes")
        out += seg
        at += FRAME + n
    if len(out) != e.size or hashlib.sha256(out).hexdigest() != e.sha256:
        raise ReleaseError("mismatch", "image: the image is not the one signed (size or SHA-256)")
    return bytes(out)
