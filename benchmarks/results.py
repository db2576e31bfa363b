"""How a benchmark ends: its figures, with the interpreter and machine they
were measured on, printed and written to bench-results/."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run(
    what: str,
    prefix: str,
    measure: Callable[[Path], dict[str, Any]],
    report: Callable[[dict[str, Any]], None],
    out: Path,
) -> int:
    """measure(a scratch folder), then report and write the figures to out;
    1 (after saying why) if it failed with RuntimeError or TimeoutError."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            results = measure(Path(tmp))
        except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
            print(f"{what} benchmark failed: {exc}", file=sys.stderr)
            return 1
    results["python"] = sys.version.split()[0]
    results["machine"] = platform.machine()
    report(results)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {out.relative_to(ROOT)}")
    return 0


def one_update(
    times: tuple[float, float, float, float],
    staged: dict[str, Any],
    offer: dict[str, Any],
    bytes_at: tuple[tuple[int, int], tuple[int, int]],
) -> dict[str, Any]:
    """One update's figures on a carrier: times when the offer, the first
    `downloading`, the `staged` and the `committed` status passed; the staged
    status and the offer (with its `_bytes`); the bytes each way on the
    carrier at the offer and at the staged status."""
    t_offer, t_dl, t_staged, t_done = times
    (base, at_staged) = bytes_at
    check_s = staged.get("check_ms", 0) / 1000
    return {
        "transfer_s": t_staged - t_offer - check_s,
        "stream_s": t_staged - t_dl,
        "update_s": t_done - t_offer,
        "check_s": check_s,
        "offer_bytes": offer["_bytes"],
        "wire_bytes": at_staged[0] - base[0] + at_staged[1] - base[1] + offer["_bytes"],
    }


def summary(runs: list[dict[str, Any]], payload: int, raw_s: float, raw_stream_s: float) -> dict[str, Any]:
    """The medians of one_update's figures over runs, with the ratios to the
    raw write of the payload (raw_s) and of the blobs alone (raw_stream_s)."""
    transfer = statistics.median(r["transfer_s"] for r in runs)
    stream = statistics.median(r["stream_s"] for r in runs)
    return {
        "runs": len(runs),
        "payload_bytes": payload,
        "transfer_s": transfer,
        "stream_s": stream,
        "update_s": statistics.median(r["update_s"] for r in runs),
        "check_s": statistics.median(r["check_s"] for r in runs),
        "transfer_vs_raw_write": transfer / raw_s,
        "stream_vs_raw_write": stream / raw_stream_s,
        "wire_bytes_per_payload_byte": statistics.median(r["wire_bytes"] for r in runs) / payload,
    }
