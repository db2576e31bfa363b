"""`permabeta rollout create|list|status|pause|resume|abort|revert`
(docs/rollouts.md 4): through the running gateway's API. `rollout status`
draws each stage as a bar of its members' states, and the judge's numbers
per metric; on a terminal it redraws every second until interrupted."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from .paths import default_db
from .rollout_plan import MEMBER_STATES

_WIDTH = 40
# one character per member state in the bars, and the words of the legend
MARKS = {
    "pending": " ",
    "awaiting_owner": "a",
    "waiting_window": "w",
    "postponed": "p",
    "offline": ".",
    "ready": ":",
    "offered": "o",
    "downloading": ">",
    "deferred": "d",
    "installing": "i",
    "trial": "t",
    "committed": "#",
    "rolled_back": "R",
    "failed": "F",
    "cancelled": "c",
    "reverting": "r",
    "reverted": "v",
    "revert_failed": "V",
    "declined": "n",
    "left": "x",
}
assert set(MARKS) == set(MEMBER_STATES)


def bar(counts: dict[str, int], width: int = _WIDTH) -> str:
    """The members of a stage, one mark per state in proportion (every state
    with a member gets at least one mark while there is room)."""
    total = sum(counts.values())
    if total == 0:
        return " " * width
    cells: list[str] = []
    shown = [s for s in MEMBER_STATES if counts.get(s)]
    for i, s in enumerate(shown):
        n = counts[s]
        k = max(1, round(n * width / total))
        room = width - len(cells) - (len(shown) - i - 1)
        cells.extend(MARKS[s] * max(1, min(k, room)))
    return "".join(cells)[:width].ljust(width)


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def status_lines(st: dict[str, Any]) -> list[str]:
    """`rollout status` as text lines."""
    r = st["rollout"]
    lines = [
        f"rollout {r['id']}: {r['ref']} to {r['cohort']}, {r['state']}"
        + (f" ({r['reason']})" if r.get("reason") else ""),
        f"  stage {r['stage'] + 1} of {len(r['stages'])}, soak {r['soak_s']:g} s "
        f"({max(0.0, st['now'] - r['stage_started']):.0f} s in), "
        f"max failure rate {r['max_failure_rate']:.1%}",
    ]
    for s in st["stages"]:
        counts = s["counts"]
        total = sum(counts.values())
        words = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if n)
        mark = ">" if s["stage"] == r["stage"] + 1 else " "
        lines.append(f"{mark} {s['stage']:>2} {s['fraction']:>5.0%} [{bar(counts)}] {total:>5}  {words}")
    j = st.get("judgement")
    if j:
        n = j.get("numbers") or {}
        lines.append(f"  judge, look {n.get('look', '?')} of {n.get('looks', '?')}: {j['result']}")
        hard = n.get("hard") or {}
        if hard:
            lines.append(
                f"    failures: {hard.get('failed', 0)} failed, {hard.get('rolled_back', 0)} rolled back "
                f"of {hard.get('offered', 0)} offered "
                f"({_num(hard.get('rate'))} against {_num(hard.get('limit'))}): {hard.get('result')}"
            )
        for m in n.get("metrics", []):
            lines.append(
                f"    {m['name']}: {m['result']}  n {m['n_treatment']}/{m['n_control']}  "
                f"median {_num(m['median_treatment'])} vs {_num(m['median_control'])} {m.get('unit') or ''}  "
                f"effect {_num(m['effect'])} (min {_num(m['min_effect'])})  "
                f"p {_num(m['p_value'])} (alpha {_num(m['alpha'])})"
            )
    for d in st.get("decisions", [])[-5:]:
        at = time.strftime("%H:%M:%S", time.localtime(d["at"]))
        lines.append(f"  {at} {d['kind']}: {d['reason'] or ''}")
    legend = "  ".join(f"{m}={k.replace('_', ' ')}" for k, m in MARKS.items() if m != " ")
    lines.append("  " + legend)
    return lines


def _client(args: argparse.Namespace) -> Any:
    from .client import ApiClient

    return ApiClient.for_args(args)


def cmd_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"release": args.release, "cohort": args.cohort}
    for key in ("stages", "soak", "max_failure_rate", "seed"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.metrics:
        body["metrics"] = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.revert:
        body["revert"] = args.revert
    if args.no_revert:
        body["no_revert"] = True
    st = _client(args).request("POST", "/api/v1/rollouts", body)
    _print(st, args.json, sys.stdout)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = _client(args).request("GET", "/api/v1/rollouts")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        where = f"stage {r['stage'] + 1}/{len(r['stages'])}"
        print(f"{r['id']}  {r['ref']:<16} {r['state']:<9} {where}  {r['cohort']}")
    return 0


def _print(st: dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps(st, indent=2), file=out)
    else:
        print("\n".join(status_lines(st)), file=out)


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    path = f"/api/v1/rollouts/{args.id}"
    live = sys.stdout.isatty() and not args.json and not args.once
    if not live:
        _print(client.request("GET", path), args.json, sys.stdout)
        return 0
    try:
        while True:
            lines = status_lines(client.request("GET", path))
            sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
            sys.stdout.flush()
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0


def cmd_command(args: argparse.Namespace) -> int:
    st = _client(args).request("POST", f"/api/v1/rollouts/{args.id}/{args.rolloutcmd}")
    _print(st, args.json, sys.stdout)
    return 0


def register(sub: Any) -> None:
    """Add `rollout ...`."""
    ro = sub.add_parser("rollout", help="ship a release to a cohort in stages").add_subparsers(
        dest="rolloutcmd", required=True, metavar="ACTION"
    )

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true")
        p.add_argument("--db", help=f"the gateway's database (default {default_db()})")

    cr = ro.add_parser("create", help="start a rollout of a release")
    cr.add_argument("release", help="a release id, MODEL@COUNTER or version")
    cr.add_argument("--cohort", default="all", help="which devices (docs/rollouts.md 3; default all)")
    cr.add_argument("--stages", help="cumulative shares, e.g. 1%%,10%%,50%%,100%% (the default)")
    cr.add_argument("--soak", help="time each stage is watched before the next, e.g. 10m (the default)")
    cr.add_argument("--max-failure-rate", dest="max_failure_rate", help="failed updates that halt, e.g. 5%%")
    cr.add_argument("--metrics", help="default, or metric names separated by commas")
    cr.add_argument("--revert", action="append", metavar="RELEASE", help="a revert release (again for more)")
    cr.add_argument("--no-revert", action="store_true", help="a rollout that cannot be reverted")
    cr.add_argument("--seed", type=int, help="the draw of devices into stages (default: at random)")
    common(cr)
    cr.set_defaults(func=cmd_create)
    ls = ro.add_parser("list", help="the rollouts")
    common(ls)
    ls.set_defaults(func=cmd_list)
    st = ro.add_parser("status", help="a rollout's stages and the judge's numbers (live on a terminal)")
    st.add_argument("id")
    st.add_argument("--once", action="store_true", help="print once, even on a terminal")
    common(st)
    st.set_defaults(func=cmd_status)
    for name, text in (
        ("pause", "offer to no more devices until resumed"),
        ("resume", "go on with a paused rollout"),
        ("abort", "stop: offer to no more devices, revert none"),
        ("revert", "stop and give the revert release to every device that took the release"),
    ):
        c = ro.add_parser(name, help=text)
        c.add_argument("id")
        common(c)
        c.set_defaults(func=cmd_command)
