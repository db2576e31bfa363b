"""`make bench`: every benchmark, one after the other; each prints its
figures with ratios against a baseline measured in the same run and writes
them to bench-results/.

    .venv/bin/python -m benchmarks                          # all, at their default sizes
    .venv/bin/python -m benchmarks fleet --devices 200      # one, with its own options
    .venv/bin/python -m benchmarks.ota_verify               # one, as a module
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from . import (
    ble_transfer,
    fleet_scale,
    judge_quality,
    ota_image,
    ota_transfer,
    ota_verify,
    pool_ingest,
    serial_transfer,
    twin_accuracy,
    update_serving,
)

# name, title, run(arguments)
BENCHMARKS: list[tuple[str, str, Callable[[list[str]], int]]] = [
    ("ota_verify", "Ed25519 verification on the device", lambda argv: ota_verify.main()),
    ("ota_transfer", "an update of 64 KiB over MQTT, end to end", lambda argv: ota_transfer.main()),
    ("serial", "the same update over a serial line", lambda argv: serial_transfer.main()),
    ("ble", "the same update over Bluetooth LE (bluezoo, no radio)", lambda argv: ble_transfer.main()),
    ("ota_image", "a 1 MiB MicroPython image written to the app partition", lambda argv: ota_image.main()),
    ("fleet", "10,000 virtual devices and an update of 1,000, through one gateway", fleet_scale.main),
    ("pool", "gateway ingest at the broker's limit: one gateway, pools of two and four", pool_ingest.main),
    (
        "serve",
        "fleet update serving: 200 lightweight receivers against the broker's raw throughput",
        update_serving.main,
    ),
    (
        "judge",
        "the rollout judge on 1,000 thermostats: bad releases halted, good ones not",
        judge_quality.main,
    ),
    (
        "twin",
        "the twin preview on 24 thermostats and 24 shirts: predicted metrics against what they then do",
        twin_accuracy.main,
    ),
]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    names = [name for name, _, _ in BENCHMARKS]
    chosen = BENCHMARKS
    if args and not args[0].startswith("-"):
        if args[0] not in names:
            print(f"no benchmark {args[0]!r}; there are: {', '.join(names)}", file=sys.stderr)
            return 2
        chosen = [b for b in BENCHMARKS if b[0] == args[0]]
        args = args[1:]
    elif args:
        print("options go after a benchmark's name, e.g. fleet --devices 200", file=sys.stderr)
        return 2
    failed = []
    for name, title, run in chosen:
        print(f"== {name}: {title}", flush=True)
        t0 = time.monotonic()
        code = run(args)
        print(f"== ({time.monotonic() - t0:.0f} s{', FAILED' if code else ''})\n", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
