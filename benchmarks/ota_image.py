"""Writing a MicroPython image on the device (firmware/pb/ota/image.py,
docs/ota.md 4.11), on the MicroPython unix port with a 128 KB heap: the
segments of a 1 MiB image (compressed as `ota build --image` ships them)
inflated into the app partition the device does not run (the file-backed
stand-in of pb/hal/partitions.py: each block erased, then written 512 bytes
at a time), then read back and hashed; against the same compressed bytes
inflated into a plain file by the code that stages every other file
(pb/ota/files.py `inflate`), measured in the same run. And the heap the
image's code takes while it writes.

    .venv/bin/python -m benchmarks.ota_image

Figures go to bench-results/ota_image.json.
"""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ota import image as ota_image
from ota.mpy import compile_module

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results" / "ota_image.json"
MICROPYTHON = Path(sys.executable).parent / "micropython"
IMAGE_BYTES = 1024 * 1024
SLOT = 2 * IMAGE_BYTES
HEAP = "128K"

_SNIPPET = """
import gc, json, sys, time
from pb.hal import partitions
from pb.ota import files, image

spec = json.load(open(sys.argv[1]))
gc.collect()
free0 = gc.mem_free()
flash = partitions.Flash(".", spec["slot"])
part = flash.boot().get_next_update()
seg = spec["segment"]
out = {}
# the baseline: each compressed segment inflated into a plain file
t0 = time.ticks_us()
for i, path in enumerate(spec["segments"]):
    files.inflate(path + ".body", "plain.bin", seg + 1)
out["file_s"] = time.ticks_diff(time.ticks_us(), t0) / 1e6
t0 = time.ticks_us()
at = 0
for path in spec["segments"]:
    want = min(seg, spec["size"] - at)
    got = image._inflate_into(path, part, at // image.BLOCK, want)
    assert got == want, (got, want)
    at += want
out["partition_s"] = time.ticks_diff(time.ticks_us(), t0) / 1e6
# one segment again, the collector off: every byte it allocates on the way
gc.collect()
gc.disable()
free = gc.mem_free()
image._inflate_into(spec["segments"][0], part, 0, seg)
out["allocated_per_segment"] = free - gc.mem_free()
gc.enable()
t0 = time.ticks_us()
out["sha256_ok"] = image.written(part, {"size": spec["size"]}) == spec["sha256"]
out["readback_s"] = time.ticks_diff(time.ticks_us(), t0) / 1e6
out["heap_free_after_imports"] = free0
print(json.dumps(out))
"""


def made_up_image(n: int) -> bytes:
    """An app image's magic, then bytes that compress about as code does."""
    rnd = random.Random(7)
    words = [rnd.randbytes(rnd.randrange(2, 9)) for _ in range(400)]
    out = bytearray(b"\xe9")
    while len(out) < n:
        out += rnd.choice(words)
    return bytes(out[:n])


def run_device(work: Path, data: bytes) -> dict[str, Any]:
    for src in sorted((ROOT / "firmware" / "pb").rglob("*.py")):
        rel = src.relative_to(ROOT / "firmware").as_posix()
        dst = (work / rel).with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(compile_module(src, rel))
    (work / "factory.bin").write_bytes(b"\xe9factory")
    from firmware.pb.hal.partitions import Flash

    Flash(str(work), SLOT).load_factory(str(work / "factory.bin"))
    blob = ota_image.pack(data)
    segments = []
    at = 0
    while at < len(blob):
        n = int.from_bytes(blob[at : at + 4], "big")
        name = f"seg{len(segments):03d}"
        (work / name).write_bytes(
            blob[at : at + ota_image.FRAME + n]
        )  # frame + segment: what the agent stages
        (work / f"{name}.body").write_bytes(blob[at + ota_image.FRAME : at + ota_image.FRAME + n])
        segments.append(name)
        at += ota_image.FRAME + n
    import hashlib

    spec = {
        "slot": SLOT,
        "segment": ota_image.SEGMENT,
        "segments": segments,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "bench.py").write_text(_SNIPPET)
    proc = subprocess.run(
        [str(MICROPYTHON), "-X", f"heapsize={HEAP}", "bench.py", "spec.json"],
        cwd=work,
        env={"MICROPYPATH": f"{work}:.frozen", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr + proc.stdout).strip()[-800:]}
    figures = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    figures["blob_bytes"] = len(blob)
    figures["segments"] = len(segments)
    return figures


def main() -> int:
    if not MICROPYTHON.exists():
        print(f"no micropython at {MICROPYTHON}: nothing to measure", file=sys.stderr)
        return 1
    data = made_up_image(IMAGE_BYTES)
    with tempfile.TemporaryDirectory(prefix="pb-bench-image-") as tmp:
        r = run_device(Path(tmp), data)
    if "error" in r or not r.get("sha256_ok"):
        print(f"the image was not written as signed: {r}", file=sys.stderr)
        return 1
    kib = IMAGE_BYTES / 1024
    base = r["file_s"]
    print(
        f"a {kib:.0f} KiB image in {r['segments']} segments ({r['blob_bytes']} bytes compressed), "
        f"MicroPython unix port, {HEAP} heap (ratio against inflating into a file)"
    )
    print(f"  into a file (baseline)    {kib / r['file_s']:8.0f} KiB/s   x{1.0:5.2f}")
    print(
        f"  into the app partition    {kib / r['partition_s']:8.0f} KiB/s   x{r['partition_s'] / base:5.2f}"
    )
    print(f"  read back and hashed      {kib / r['readback_s']:8.0f} KiB/s")
    print(
        f"  allocated per segment     {r['allocated_per_segment']} B "
        f"({ota_image.SEGMENT // 1024} KiB of image; garbage collected on the way)"
    )
    OUT.parent.mkdir(exist_ok=True)
    figures = {
        "image_bytes": IMAGE_BYTES,
        "heap": HEAP,
        **r,
        "ratio_partition_to_file": r["partition_s"] / base,
        "micropython": subprocess.run(
            [str(MICROPYTHON), "-c", "import sys; print(sys.version)"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "machine": platform.machine(),
    }
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
