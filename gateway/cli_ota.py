"""`permabeta ota publish|releases` and `permabeta devices update`: releases
into a running gateway, and an update followed live on one line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, TextIO

from .errors import ApiError
from .paths import db_of, default_db
from .updates import ACTIVE, ENDED, Update

POLL_S = 0.2
_BAR = 24
_RATE_WINDOW_S = 2.0
_API_PATIENCE_S = 5.0


def _kb(n: float) -> str:
    return f"{n / 1024:.1f}"


# ---- publish and list ----------------------------------------------------------


def cmd_ota_publish(args: argparse.Namespace) -> int:
    from ota.release import read

    from .archive import TAR_TYPE, pack_release
    from .client import ApiClient

    rel = read(Path(args.release))  # the form only; the gateway verifies it
    client = ApiClient.for_args(args)
    r = client.upload("/api/v1/releases", pack_release(rel), TAR_TYPE)
    what = "published" if r["new"] else "already published:"
    print(
        f"{what} {r['ref']} ({r['version']}), {r['files']} files, {r['size']} bytes "
        f"({r['zsize']} compressed); id {r['id']}"
    )
    return 0


def cmd_ota_releases(args: argparse.Namespace) -> int:
    from .releases import ReleaseStore
    from .store import Store

    with Store(db_of(args), readonly=True) as store:
        if args.ref:
            return _show_release(ReleaseStore(store), args.ref, args.json)
        releases = ReleaseStore(store).list(args.model)
    if args.json:
        print(json.dumps([r.summary() for r in releases], indent=2))
        return 0
    if not releases:
        print("no releases yet (add one: permabeta ota publish R)")
        return 0
    rows = [("ID", "RELEASE", "VERSION", "FEATURES", "FILES", "KB", "ADDED")]
    for r in releases:
        feats = ", ".join(f"{n} {v}" for n, v in r.summary()["features"].items())
        added = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.added))
        rows.append((r.id[:12], r.ref, r.version, feats, str(r.files), _kb(r.zsize), added))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _show_release(releases: Any, ref: str, as_json: bool) -> int:
    """`ota releases REF`: one release, its features and its notes."""
    r = releases.find(ref)
    notes = releases.notes(r)
    if as_json:
        print(json.dumps(r.summary() | {"notes": notes}, indent=2))
        return 0
    print(f"{r.ref} ({r.version}), id {r.id}")
    print("features: " + ", ".join(f"{n} {v}" for n, v in r.summary()["features"].items()))
    print(f"{r.files} files, {_kb(r.zsize)} KB compressed")
    if notes is None:
        print("no release notes")
    else:
        print("release notes (signed with it):")
        print("\n".join(f"  {line}" for line in notes.splitlines()))
    return 0


# ---- an update, live -----------------------------------------------------------------


class Rate:
    """Bytes per second over the last few seconds of samples."""

    def __init__(self, window_s: float = _RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, n: int) -> float | None:
        self._samples.append((t, n))
        while len(self._samples) > 2 and t - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        return (n - n0) / (t - t0) if t > t0 else None


def progress_line(u: dict[str, Any], rate: float | None) -> str:
    """One line of an update's progress: bar, bytes/total (as the device
    counts them: the compressed bytes it lacked), the gateway's send rate, state."""
    total, done = u.get("total"), u.get("bytes") or 0
    if total:
        filled = min(_BAR, int(_BAR * done / total))
        bar = "#" * filled + "-" * (_BAR - filled)
        amount = f"{_kb(done)}/{_kb(total)} KB"
    else:
        bar = "-" * _BAR
        amount = f"sent {_kb(u.get('served') or 0)} KB"
    speed = f"{_kb(rate)} KB/s" if rate is not None else "-- KB/s"
    state = u["state"]
    if state == "deferred":  # held back by the device, which says why
        state += f" ({u.get('reason') or 'no reason given'})"
    return f"[{bar}] {amount}  {speed}  {state}"


def final_line(u: dict[str, Any]) -> str:
    took = (u.get("finished") or time.time()) - u["started"]
    what = f"{u['model']}@{u['counter']} ({u['version']}) on {u['device']}"
    sent = f"{_kb(u.get('served') or 0)} KB sent in {u.get('requests') or 0} chunks"
    if u["state"] == "committed":
        return f"update {u['id']} committed: {what} in {took:.1f} s; {sent}"
    return f"update {u['id']} {u['state']}: {u.get('reason') or 'no reason given'}; {what}; {sent}"


def watch(
    client: Any, uid: str, timeout: float | None, out: TextIO, live: bool, poll_s: float = POLL_S
) -> dict[str, Any]:
    """Poll an update until it ends (or timeout seconds pass), showing its
    progress: on one rewritten line if live, else a line per change of state.
    The last record. Raises ApiError if the gateway stays unreachable."""
    rate = Rate()
    start = time.monotonic()
    last_ok = start
    shown = 0  # steps written (not live)
    while True:
        now = time.monotonic()
        try:
            u: dict[str, Any] = client.request("GET", f"/api/v1/updates/{uid}", timeout=5)
            last_ok = now
        except ApiError:
            if now - last_ok > _API_PATIENCE_S:
                raise
            time.sleep(poll_s)
            continue
        speed = rate.add(now, int(u.get("served") or 0))
        if live:
            out.write("\r" + progress_line(u, speed) + "\x1b[K")
            out.flush()
        else:
            # every change of state, even those between two polls
            steps = u.get("steps") or []
            for step in steps[shown:]:
                out.write(progress_line({**u, **step}, speed if step is steps[-1] else None) + "\n")
            if len(steps) > shown:
                shown = len(steps)
                out.flush()
        if u["ended"] or (timeout is not None and now - start >= timeout):
            if live:
                out.write("\n")
            return u
        time.sleep(poll_s)


def cmd_devices_update(args: argparse.Namespace) -> int:
    from .client import ApiClient

    client = ApiClient.for_args(args)
    body = {"release": args.release, "force": args.force}
    u = client.request("POST", f"/api/v1/devices/{args.id}/update", body)
    return follow(client, u, args)


def follow(client: Any, u: dict[str, Any], args: argparse.Namespace) -> int:
    """Say that update u was offered and, unless --no-wait, follow it until
    it ends or --timeout passes: 0 only if it committed."""
    print(f"update {u['id']}: {u['model']}@{u['counter']} ({u['version']}) offered to {u['device']}")
    sys.stdout.flush()
    if args.no_wait:
        return 0
    try:
        u = watch(client, u["id"], args.timeout, sys.stdout, sys.stdout.isatty())
    except KeyboardInterrupt:
        print(f"\nstopped watching: update {u['id']} goes on at the gateway")
        return 130
    if not u["ended"]:
        after = (
            "the device holds it back and goes on by itself; its deadline waits until then"
            if u["state"] == "deferred"
            else "the gateway goes on; it fails it if not committed by its deadline"
        )
        print(f"stopped watching after {args.timeout:g} s: update {u['id']} is still {u['state']} ({after})")
        return 1
    print(final_line(u))
    return 0 if u["state"] == "committed" else 1


# ---- updates across devices -------------------------------------------------------------


def release_text(ota: object) -> str:
    """What a device runs, as its hello says: `@COUNTER STATE`."""
    if not isinstance(ota, dict) or not ota:
        return "-"
    return f"@{ota.get('counter', '?')} {ota.get('state') or '?'}"


def update_brief(u: Update | None) -> dict[str, Any] | None:
    """A device's latest update, as `devices list --json` shows it."""
    if u is None:
        return None
    return {
        "id": u.id,
        "release": u.release,
        "counter": u.counter,
        "version": u.version,
        "state": u.state,
        "reason": u.reason,
        "device_state": u.device_state,
        "started": u.started,
        "updated": u.updated,
        "ended": u.ended,
    }


def update_text(u: Update | None) -> str:
    if u is None:
        return "-"
    return f"@{u.counter} {u.state}"


def cmd_updates_list(args: argparse.Namespace) -> int:
    from .store import Store
    from .updater import UpdateTable

    with Store(db_of(args), readonly=True) as store:
        updates = UpdateTable(store).find(args.state, args.device, args.model, args.limit)
    if args.json:
        print(json.dumps([u.to_dict() for u in updates], indent=2))
        return 0
    if not updates:
        print("no updates" + (f" {args.state}" if args.state else "") + " yet")
        return 0
    rows = [("UPDATE", "DEVICE", "RELEASE", "VERSION", "STATE", "BYTES", "STARTED", "REASON")]
    for u in updates:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(u.started))
        amount = f"{_kb(u.bytes)}/{_kb(u.total)} KB" if u.total else "-"
        rows.append(
            (u.id, u.device, f"{u.model}@{u.counter}", u.version, u.state, amount, started, u.reason or "")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    counts: dict[str, int] = {}
    for u in updates:
        counts[u.state] = counts.get(u.state, 0) + 1
    print(f"{len(updates)} updates: " + ", ".join(f"{n} {st}" for st, n in sorted(counts.items())))
    return 0


def show_device_ota(db: Path | str, dev: str, ota: dict[str, Any] | None) -> list[str]:
    """The lines `devices show` adds: the running set, the latest updates
    (as the device said them: the caller escapes what it prints)."""
    from .store import Store
    from .updater import UpdateTable

    lines = []
    if ota:
        manifest = ota.get("manifest")
        lines.append(
            f"  release: counter {ota.get('counter')}, {ota.get('state')}"
            + (f", manifest {manifest[:12]}" if isinstance(manifest, str) else "")
        )
        if "image" in ota:
            image = ota["image"]
            lines.append(f"  image: {image if isinstance(image, str) else 'as flashed'}")
    with Store(db, readonly=True) as store:
        updates = UpdateTable(store).of_device(dev, 3)
    for u in updates:
        why = f" ({u.reason})" if u.reason else ""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(u.started))
        lines.append(
            f"  update {u.id}: {u.model}@{u.counter} ({u.version}) {u.state}{why}, "
            f"{_kb(u.served)} KB sent, started {started}"
        )
    return lines


def register_updates(sub: Any) -> None:
    """Add `updates list`."""
    ups = sub.add_parser("updates", help="updates across devices").add_subparsers(
        dest="updcmd", required=True, metavar="ACTION"
    )
    ls = ups.add_parser("list", help="list updates, newest first")
    ls.add_argument(
        "--state",
        choices=[*ACTIVE, *ENDED, "active", "ended"],
        metavar="S",
        help="only updates in state S: an update state, active (in progress) or ended",
    )
    ls.add_argument("--device", metavar="ID", help="only this device's")
    ls.add_argument("--model", help="only this model's")
    ls.add_argument("--limit", type=int, default=1000, metavar="N", help="at most N (default 1000)")
    ls.add_argument("--json", action="store_true", help="the update records as JSON")
    ls.add_argument("--db", help=f"the gateway's database (default {default_db()})")
    ls.set_defaults(func=cmd_updates_list)


def follow_options(parser: Any) -> None:
    """--no-wait and --timeout, of a command that starts an update and follows it."""
    parser.add_argument("--no-wait", action="store_true", help="start it and return")
    parser.add_argument("--timeout", type=float, metavar="S", help="stop watching after S seconds")


def register(ota: Any, devices: Any) -> None:
    """Add `ota publish`, `ota releases` and `devices update` to the parsers."""
    pb = ota.add_parser("publish", help="add a signed release to the running gateway")
    pb.add_argument("release", metavar="R", help="the release folder (manifest.json, blobs/)")
    pb.add_argument("--db", help=f"the gateway's database (default {default_db()})")
    pb.set_defaults(func=cmd_ota_publish)

    rl = ota.add_parser("releases", help="the releases a gateway holds, or one with its notes")
    rl.add_argument("ref", nargs="?", metavar="RELEASE", help="show this one (id, MODEL@COUNTER or version)")
    rl.add_argument("--model", help="only this model's")
    rl.add_argument("--json", action="store_true")
    rl.add_argument("--db", help=f"the gateway's database (default {default_db()})")
    rl.set_defaults(func=cmd_ota_releases)

    up = devices.add_parser(
        "update",
        help="update a device to a release and show its progress",
        description="RELEASE: a release id (or its first 8+ characters), MODEL@COUNTER, or a version. "
        "Exits 0 only when the device has committed the update.",
    )
    up.add_argument("id")
    up.add_argument("release", metavar="RELEASE")
    follow_options(up)
    up.add_argument(
        "--force",
        action="store_true",
        help="offer it even if the device seems offline, or takes it out of a rollout",
    )
    up.add_argument("--db")
    up.set_defaults(func=cmd_devices_update)
