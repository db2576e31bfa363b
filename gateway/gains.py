"""What a device could gain (docs/protocol.md 13): the features of the
releases its maker rolls out for its model (a rollout running, paused or
completed: never one a maker only stored, halted or aborted, nor a revert)
that it does not run and whose hardware it has now, an add-on plugged in
among it; the features it runs that wait for hardware it lacks; and those
an add-on it could be given would let run.

Pure but for reading the stored releases' feature manifests: the device's
capabilities and add-ons come from its hello, the parts' names from its
board file.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from .errors import GatewayError
from .provision import board_for
from .releases import ReleaseStore, StoredRelease
from .store import DeviceRecord


class GainError(GatewayError):
    """No gain of that feature for the device; code says why (installed,
    lacks_hardware, no_gain)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _strings(v: Any) -> list[str]:
    return [str(x) for x in v if isinstance(x, str)] if isinstance(v, list) else []


def _board(d: DeviceRecord) -> Mapping[str, Any]:
    try:
        return board_for(d.model or "", d.board)
    except Exception:  # noqa: BLE001 - a board this gateway does not know: no add-on names
        return {}


def part_of(board: Mapping[str, Any], cap: str) -> str | None:
    """The name of the add-on that gives capability cap (None: not an add-on)."""
    addon = (board.get("addons") or {}).get(cap)
    return str(addon.get("part") or cap) if isinstance(addon, Mapping) else None


def _named(board: Mapping[str, Any], caps: list[str]) -> str:
    return ", ".join(f"{part_of(board, c)} ({c})" if part_of(board, c) else c for c in caps)


def _counter(d: DeviceRecord) -> int:
    c = (d.ota or {}).get("counter")
    return c if isinstance(c, int) and not isinstance(c, bool) else 0


def _release(r: StoredRelease) -> dict[str, Any]:
    return {"id": r.id, "ref": r.ref, "version": r.version, "counter": r.counter}


# the rollouts whose release its maker makes available: being rolled out, or done
OUT = ("running", "paused", "completed")


def rolled_out(rollouts: Any) -> set[str]:
    """The ids of the releases being rolled out or rolled out (a RolloutTable)."""
    return {r.release for r in rollouts.all() if r.state in OUT}


def gains(releases: ReleaseStore, d: DeviceRecord, available: Collection[str]) -> dict[str, Any]:
    """{"gains", "waiting", "with_addons"} for device d, from the releases
    whose ids are in `available` (rolled_out):

    - gains: features of such a release above the one it runs that it
      does not run, whose every required capability it has now (the newest
      release with each); the text says which add-on made it possible;
    - waiting: features it runs that wait for hardware it lacks now;
    - with_addons: features of a stored release that an add-on its board
      takes, not plugged in, would let run."""
    board = _board(d)
    caps = set(_strings(d.hello.get("caps")))
    plugged = set(_strings(d.hello.get("addons")))
    takes = set((board.get("addons") or {}).keys())
    installed = {n for n, f in d.features.items() if isinstance(f, Mapping)}
    gained: dict[str, dict[str, Any]] = {}
    could: dict[str, dict[str, Any]] = {}
    above = (
        [r for r in releases.list(d.model) if r.counter > _counter(d) and r.id in available]
        if d.model
        else []
    )
    for r in sorted(above, key=lambda r: -r.counter):
        try:
            manifests = releases.feature_manifests(r)
        except GatewayError:
            continue  # (a release whose blobs are gone: nothing it offers can be installed)
        for name, m in sorted(manifests.items()):
            if name in installed or name in gained or name in could:
                continue
            requires = _strings(m.get("requires"))
            missing = [c for c in requires if c not in caps]
            entry = {
                "feature": name,
                "version": str(m.get("version")),
                "description": str(m.get("description") or ""),
                "release": _release(r),
                "requires": requires,
            }
            if not missing:
                by = [c for c in requires if c in plugged]
                text = (
                    f"{_named(board, by)} was plugged in: the {name} feature can now run"
                    if by
                    else f"the {name} feature can run on this device"
                )
                gained[name] = entry | {"addons": by, "text": text}
            elif set(missing) <= takes:
                text = f"plug in {_named(board, missing)} and the {name} feature can run"
                could[name] = entry | {"needs": missing, "text": text}
    waiting = []
    for name, f in sorted(d.features.items()):
        needs = _strings(f.get("waiting")) if isinstance(f, Mapping) else []
        if needs:
            waiting.append(
                {
                    "feature": name,
                    "version": str(f.get("version")),
                    "needs": needs,
                    "text": f"{name} is installed and waits for {_named(board, needs)}",
                }
            )
    return {
        "device": d.id,
        "gains": list(gained.values()),
        "waiting": waiting,
        "with_addons": list(could.values()),
    }


def gain_of(
    releases: ReleaseStore, d: DeviceRecord, feature: str, available: Collection[str]
) -> dict[str, Any]:
    """The gain of feature for d. Raises GainError saying why there is none."""
    shown = gains(releases, d, available)
    for g in shown["gains"]:
        if g["feature"] == feature:
            return dict(g)
    if feature in d.features:
        raise GainError(f"{d.id} has {feature[:40]} installed already", "installed")
    for c in shown["with_addons"]:
        if c["feature"] == feature:
            raise GainError(f"{c['text']}: {d.id} lacks it now", "lacks_hardware")
    raise GainError(
        f"no release rolled out above the one {d.id} runs has a feature {feature[:40]!r} it can run",
        "no_gain",
    )
