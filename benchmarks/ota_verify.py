"""Ed25519 verification of an OTA signature (firmware/pb/ota/ed25519.py), per
interpreter: ms per verification of a 1 KiB message, SHA-512 throughput (an
update image is hashed whole), and on MicroPython the heap it takes.

    .venv/bin/python -m benchmarks.ota_verify

Ratios are against OpenSSL (the `cryptography` package) measured in the same
run. Figures go to bench-results/ota_verify.json.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from firmware.pb.ota import ed25519
from firmware.pb.ota.sha512 import Sha512Pure

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results" / "ota_verify.json"
MICROPYTHON = Path(sys.executable).parent / "micropython"
MESSAGE = bytes(range(256)) * 4  # 1 KiB, about a release manifest
SHA_BYTES = 64 * 1024

# Runs on MicroPython: argv[1] holds key, message and signature as hex.
_SNIPPET = """
import gc, json, sys, time
from pb.ota import ed25519
from pb.ota.sha512 import Sha512Pure

with open(sys.argv[1]) as f:
    spec = json.load(f)
pk, msg, sig = [bytes.fromhex(x) for x in spec["case"]]
out = {}
if spec["timing"]:
    n = spec["n"]
    ed25519.verify(pk, msg, sig)
    t0 = time.ticks_us()
    for _ in range(n):
        ok = ed25519.verify(pk, msg, sig)
    out["ms_per_verify"] = time.ticks_diff(time.ticks_us(), t0) / 1000 / n
    out["ok"] = ok
    block = bytes(1024)
    t0 = time.ticks_us()
    h = Sha512Pure()
    for _ in range(spec["sha_bytes"] // 1024):
        h.update(block)
    h.digest()
    out["sha512_kib_per_s"] = (spec["sha_bytes"] / 1024) / (time.ticks_diff(time.ticks_us(), t0) / 1e6)
    gc.collect()
    gc.disable()
    free = gc.mem_free()
    ed25519.verify(pk, msg, sig)
    out["allocated_bytes_per_verify"] = free - gc.mem_free()
    gc.enable()
gc.collect()
free = gc.mem_free()
low = [free]
def tick():
    gc.collect()
    m = gc.mem_free()
    if m < low[0]:
        low[0] = m
v = ed25519.Verifier(pk, sig, tick)
for i in range(0, len(msg), 256):
    v.update(msg[i:i + 256])
out["ok_streamed"] = v.verify()
out["peak_live_bytes"] = free - low[0]
print(json.dumps(out))
"""


def best_ms(fn: Callable[[], object], n: int, rounds: int = 3) -> float:
    """The best of `rounds` runs of n calls, in ms per call."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) * 1000 / n)
    return best


def sha_kib_per_s(factory: Callable[[], Any]) -> float:
    block = bytes(1024)
    t0 = time.perf_counter()
    h = factory()
    for _ in range(SHA_BYTES // 1024):
        h.update(block)
    h.digest()
    return (SHA_BYTES / 1024) / (time.perf_counter() - t0)


def on_micropython(case: list[str], heap: str, timing: bool) -> dict[str, Any]:
    """The snippet's figures from one micropython process with firmware/pb
    (alone) importable as `pb`."""
    with tempfile.TemporaryDirectory(prefix="pb-bench-") as tmp:
        root = Path(tmp)
        shutil.copytree(ROOT / "firmware" / "pb", root / "pb", ignore=shutil.ignore_patterns("__pycache__"))
        (root / "bench.py").write_text(_SNIPPET)
        spec = {"case": case, "timing": timing, "n": 50, "sha_bytes": SHA_BYTES}
        (root / "input.json").write_text(json.dumps(spec))
        proc = subprocess.run(
            [str(MICROPYTHON), "-X", f"heapsize={heap}", "bench.py", "input.json"],
            cwd=root,
            env={"MICROPYPATH": str(root), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def micropython_version() -> str:
    proc = subprocess.run(
        [str(MICROPYTHON), "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout.strip()


def main() -> int:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = key.public_key()
    pk = pub.public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = key.sign(MESSAGE)
    if not ed25519.verify(pk, MESSAGE, sig):
        print("pb.ota.ed25519 rejects a valid signature: no figures", file=sys.stderr)
        return 1

    ms: dict[str, float] = {
        "openssl": best_ms(lambda: pub.verify(sig, MESSAGE), 2000),
        "cpython_hashlib": best_ms(lambda: ed25519.verify(pk, MESSAGE, sig), 200),
        "cpython_pure": best_ms(lambda: ed25519.verify(pk, MESSAGE, sig, sha=Sha512Pure), 200),
    }
    import hashlib

    sha: dict[str, float] = {
        "cpython_hashlib": sha_kib_per_s(hashlib.sha512),
        "cpython_pure": sha_kib_per_s(Sha512Pure),
    }
    heap: dict[str, Any] = {}
    case = [pk.hex(), MESSAGE.hex(), sig.hex()]
    if MICROPYTHON.exists():
        mp = on_micropython(case, "16M", timing=True)
        if "error" in mp or not mp["ok"] or not mp["ok_streamed"]:
            print(f"micropython failed: {mp}", file=sys.stderr)
            return 1
        ms["micropython"] = mp["ms_per_verify"]
        sha["micropython"] = mp["sha512_kib_per_s"]
        small = on_micropython(case, "64K", timing=False)
        heap = {
            "peak_live_bytes": mp["peak_live_bytes"],
            "allocated_bytes_per_verify": mp["allocated_bytes_per_verify"],
            "runs_with_64k_heap": bool(small.get("ok_streamed")),
            "peak_live_bytes_64k_heap": small.get("peak_live_bytes"),
        }
    else:
        print(f"no micropython at {MICROPYTHON}: MicroPython skipped", file=sys.stderr)

    base = ms["openssl"]
    print(f"Ed25519 verify, {len(MESSAGE)} B message (ratio against OpenSSL via cryptography)")
    for name, value in ms.items():
        print(f"  {name:16} {value:8.3f} ms/verify   x{value / base:7.1f}")
    print(f"SHA-512, {SHA_BYTES // 1024} KiB")
    for name, value in sha.items():
        print(f"  {name:16} {value:10.0f} KiB/s")
    if heap:
        print("MicroPython heap, one verification")
        print(f"  peak live data      {heap['peak_live_bytes']} B (sampled after a collection at each tick)")
        print(f"  allocated in total  {heap['allocated_bytes_per_verify']} B (garbage collected on the way)")
        print(f"  runs with 64K heap  {heap['runs_with_64k_heap']}")

    OUT.parent.mkdir(exist_ok=True)
    figures = {
        "message_bytes": len(MESSAGE),
        "ms_per_verify": ms,
        "ratio_to_openssl": {k: v / base for k, v in ms.items()},
        "sha512_kib_per_s": sha,
        "micropython_heap": heap,
        "python": sys.version.split()[0],
        "micropython": micropython_version() if MICROPYTHON.exists() else None,
        "machine": platform.machine(),
    }
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
