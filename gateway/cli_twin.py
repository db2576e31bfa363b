"""`permabeta devices preview ID RELEASE`: the twin preview of a release on
a device (docs/twin.md), asked of the running gateway and followed until it
is computed; the two runs' metrics side by side."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .errors import ApiError
from .paths import db_of, default_db

POLL_S = 1.0
NAMES = {
    "minutes_outside_band": "minutes outside the comfort band",
    "heater_energy_kwh": "heater energy (kWh)",
    "heater_cost": "heater cost (price x kWh)",
    "heater_hours": "heater on (h)",
    "minutes_above_threshold": "minutes above the humidity threshold",
    "vent_actuations": "vent actuations",
    "vent_open_hours": "vent open (h)",
}


def _num(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"


def _change(m: dict[str, Any]) -> str:
    if m.get("change") is None:
        return "-"
    text = f"{m['change']:+,.2f}"
    if m.get("relative") is not None:
        text += f" ({m['relative']:+.1%})"
    return text


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "-"


def _settings(source: str, values: dict[str, Any], keys: tuple[str, ...]) -> str:
    shown = []
    for k in keys:
        v = values.get(k)
        if v is None or v == []:
            continue
        if k == "schedule":
            v = ", ".join(f"{at} {sp:g}" for at, sp in v)
        shown.append(f"{k} {v:g}" if isinstance(v, int | float) else f"{k} {v}")
    return f"settings ({source}): " + ", ".join(shown) if shown else ""


def _conditions(c: dict[str, Any] | None) -> str:
    """What the fit estimated, in one line."""
    if not c:
        return ""
    parts = []
    if "outdoor" in c:
        o = c["outdoor"]
        text = f"outdoor ({o['source']}) {o['mean_c']:g} C on average"
        if o.get("swing_c") is not None:
            text += f", swing {o['swing_c']:g} C"
        parts.append(text)
        occ = c.get("occupancy") or {}
        peak = max([*occ.get("weekday", []), *occ.get("weekend", []), 0.0])
        parts.append(f"occupants up to {peak:g} {occ.get('unit', '')}".rstrip())
        s = c.get("settings") or {}
        parts.append(
            _settings(s.get("source", "?"), s.get("thermostat") or {}, ("setpoint", "hysteresis", "schedule"))
        )
    if "exertion" in c:
        e = c["exertion"]
        parts.append(f"ambient humidity {c['ambient_humidity']:g} %RH")
        parts.append(
            f"sessions every {e['period_min']:g} min, sweat up to {e['sweat_peak_per_min']:g} %RH/min"
        )
        s = c.get("settings") or {}
        parts.append(
            _settings(
                s.get("source", "?"), s.get("vent") or {}, ("open_at", "close_at", "full_at", "min_opening")
            )
        )
    return "; ".join(p for p in parts if p)


def preview_text(p: dict[str, Any]) -> str:
    """The preview as the command line prints it."""
    rel = p.get("release") or {}
    cur = p.get("current") or {}
    lines = [f"{p['device']}: preview of {rel.get('ref') or rel.get('id', '')[:12]} ({p['state']})"]
    if cur:
        lines[0] += f" against {cur.get('ref')} (what it runs)"
    rec = p.get("record")
    if rec:
        lines.append(
            f"record: {_when(rec['start'])} to {_when(rec['end'])} UTC, {rec['hours']:.1f} h, "
            f"{rec['rows']} rows, coverage {rec['coverage']:.0%}"
        )
    q = (p.get("fit") or {}).get("quality")
    if q and q.get("rmse_c") is not None:
        r2 = f", R^2 {q['r2']:.2f}" if q.get("r2") is not None else ""
        lines.append(
            f"fit: misses the held-out {q['tail_hours']:.0f} h by {q['rmse_c']:.3f} C an hour ahead{r2}"
        )
    elif q and q.get("rmse_hum") is not None:
        r2 = f", R^2 {q['r2']:.2f}" if q.get("r2") is not None else ""
        lines.append(f"fit: misses the held-out {q['tail_hours']:.1f} h by {q['rmse_hum']:.2f} %RH{r2}")
    check = (p.get("fit") or {}).get("check")
    if check and check.get("error") is not None:
        lines.append(
            "check: the twin with the current features redoes the record's "
            f"{check['metric'].replace('_', ' ')} "
            f"({_num(check['recorded'])} recorded, {_num(check['twin'])} in the twin, {check['error']:+.1%})"
        )
    conditions = _conditions(p.get("conditions"))
    if conditions:
        lines.append(f"conditions: {conditions}")
    if p["state"] == "computing":
        lines.append(f"computing since {_when(p.get('started') or p.get('requested'))} UTC")
        return "\n".join(lines)
    if p["state"] in ("insufficient", "failed"):
        reasons = p.get("reasons") or [p.get("reason") or "?"]
        held = [w["stream"] for w in p.get("withheld") or []]
        if p["state"] == "failed":
            lines.append("the preview failed:")
        elif held:  # (not the record's fault: the owner's choice, which the owner can change)
            lines.append("no numbers: the twin lacks what the device keeps back:")
        else:
            lines.append("no numbers: the record is too short or too poor for a twin:")
        lines += [f"  - {r}" for r in reasons]
        if held:
            shared = " ".join(f"{path}=share" for path in held)
            lines.append(f"share it again: permabeta devices streams {p['device']} {shared}")
        return "\n".join(lines)
    metrics = p.get("metrics") or {}
    now_h = f"now ({cur.get('ref', 'current')})"
    new_h = f"with {rel.get('ref') or 'the release'}"
    width = max(len(NAMES.get(n, n)) for n in metrics) if metrics else 10
    lines.append("")
    lines.append(f"{'':<{width}}  {now_h:>20}  {new_h:>20}  {'change':>18}")
    for name, m in metrics.items():
        label = NAMES.get(name, name)
        lines.append(
            f"{label:<{width}}  {_num(m['current']):>20}  {_num(m['candidate']):>20}  {_change(m):>18}"
        )
    missing = [n for n, m in metrics.items() if m["current"] is None]
    if "heater_energy_kwh" in missing:
        lines.append("(energy and cost need the heater's rated power: --heater-w W)")
    elif "heater_cost" in missing:
        lines.append("(no cost: the gateway sent this device no prices)")
    return "\n".join(lines)


def cmd_devices_preview(args: argparse.Namespace) -> int:
    from .client import ApiClient

    api = ApiClient.from_db(db_of(args))
    body: dict[str, Any] = {"release": args.release}
    if args.heater_w is not None:
        body["heater_w"] = args.heater_w
    if args.refresh:
        body["refresh"] = True
    answer = api.request("POST", f"/api/v1/devices/{args.id}/preview", body)
    deadline = time.monotonic() + args.timeout
    while answer["state"] == "computing" and not args.no_wait:
        if time.monotonic() > deadline:
            raise ApiError(f"the preview is still computing after {args.timeout:g} s (ask again later)")
        time.sleep(POLL_S)
        answer = api.request("GET", f"/api/v1/devices/{args.id}/preview/{answer['release']['id']}")
    print(json.dumps(answer, indent=2) if args.json else preview_text(answer))
    return 0 if answer["state"] in ("ready", "computing") else 1


def register(dv: Any) -> None:
    """Add `devices preview`."""
    pv = dv.add_parser(
        "preview",
        help="what a release would do on a device, from its twin",
        description="Fit the device's twin to its record and run the release's features on it against "
        "the ones it runs now (docs/twin.md); waits until the gateway has computed it.",
    )
    pv.add_argument("id")
    pv.add_argument("release", help="a release id, MODEL@COUNTER or version")
    pv.add_argument("--no-wait", action="store_true", help="ask, and print what there is now")
    pv.add_argument(
        "--heater-w", type=float, metavar="W", help="the heater's rated power (W): energy and cost need it"
    )
    pv.add_argument("--refresh", action="store_true", help="compute it again, even if a recent one holds")
    pv.add_argument("--timeout", type=float, default=900, metavar="S", help="seconds to wait (default 900)")
    pv.add_argument("--json", action="store_true")
    pv.add_argument("--db", help=f"the gateway's database (default {default_db()})")
    pv.set_defaults(func=cmd_devices_preview)
