"""What waits for an owner's say on one device (docs/rollouts.md 8.1): each
release offered to it, with its signed notes, what it changes
(gateway/changes.py), its state for the device and the owner's decision;
and the rollback the device may take, if its maker signed one.

A release waits for a device when a rollout of it that runs (or is paused,
or completed) has the device as a member that has not taken it, left it or
failed it, or when an update of it is under way for the device (one a
maker started by hand). A rollback is the set the device ran before its
current release, signed again by the maker as a release of its model with
a higher counter (docs/rollouts.md 7): the gateway never makes one, so
without one there is none.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from .changes import FeatureSet, compare, of_hello, of_release
from .decisions import DecisionTable
from .paths import firmware_dir
from .releases import StoredRelease
from .rollout_plan import UPDATE_SHOWN
from .rollouts import content
from .settings import SettingsTable
from .store import DeviceRecord

if TYPE_CHECKING:
    from .service import Gateway

_OVER = ("committed", "failed", "cancelled", "rolled_back", "left", "reverting", "reverted", "revert_failed")
_ROLLOUT_STATES = ("running", "paused", "completed")  # the rollouts that still offer their release


@functools.cache
def factory_manifests() -> dict[str, dict[str, Any]]:
    """The manifests of the features this firmware ships, by name: what a
    device runs from the factory (their permissions for its current set)."""
    out = {}
    for path in sorted((firmware_dir() / "features").glob("*/manifest.json")):
        m = json.loads(path.read_bytes())
        if isinstance(m, dict) and isinstance(m.get("name"), str):
            out[m["name"]] = m
    return out


def running_release(gw: Gateway, d: DeviceRecord) -> StoredRelease | None:
    """The stored release the device's hello says it runs (None: its factory
    set, safe mode, or a release this gateway does not hold)."""
    manifest = (d.ota or {}).get("manifest")
    r = gw.ota.releases.get(manifest) if isinstance(manifest, str) else None
    return r if r is not None and r.model == d.model else None


def current_set(gw: Gateway, d: DeviceRecord) -> FeatureSet:
    """What the device runs now, with each feature's permissions where known."""
    r = running_release(gw, d)
    return of_release(r.body) if r is not None else of_hello(d.features, factory_manifests())


def counter_of(d: DeviceRecord) -> int:
    c = (d.ota or {}).get("counter")
    return c if isinstance(c, int) and not isinstance(c, bool) else 0


def _caps(d: DeviceRecord) -> list[str]:
    caps = d.hello.get("caps")
    return [c for c in caps if isinstance(c, str)] if isinstance(caps, list) else []


def described(gw: Gateway, d: DeviceRecord, now_set: FeatureSet, r: StoredRelease) -> dict[str, Any]:
    """A release as its owner is shown it for device d: its summary, its
    signed notes, what it changes and each of its features' description."""
    manifests = gw.ota.releases.feature_manifests(r)
    changes = compare(now_set, of_release(r.body), r.body.get("requires", []), _caps(d))
    return {
        "release": r.summary(),
        "notes": gw.ota.releases.notes(r),
        "changes": changes.to_dict(),
        "descriptions": {n: str(m.get("description", "")) for n, m in manifests.items()},
    }


def waiting(gw: Gateway, d: DeviceRecord) -> list[tuple[StoredRelease, str, str | None, str | None]]:
    """The releases waiting for d: (release, its state for d, rollout id, update id)."""
    out: list[tuple[StoredRelease, str, str | None, str | None]] = []
    counter = counter_of(d)
    rollouts = gw.rollouts
    found = rollouts.table.rollout_of(d.id, _ROLLOUT_STATES)
    if found is not None:
        r, row = found
        rel = gw.ota.releases.get(r.release)
        (member,) = rollouts.members(r, [row])
        shown = member.shown(r.stage, gw.clock.now())
        if rel is not None and rel.counter > counter and shown not in _OVER:
            out.append((rel, shown, r.id, row.update_id))
    u = gw.ota.active(d.id)
    if u is not None and all(rel.id != u.release for rel, *_ in out):
        rel = gw.ota.releases.get(u.release)
        if rel is not None:
            out.append((rel, UPDATE_SHOWN.get(u.state, u.state), None, u.id))
    return out


def revert_for(gw: Gateway, d: DeviceRecord) -> StoredRelease | None:
    """The release that takes d back to the set it ran before its current
    (committed) release, by its updates here: a stored release of its
    model, with a counter above the one it runs, that installs what that set
    installed; for a device whose set before was the factory's, which the
    gateway never saw, the revert a maker named for it in a rollout of its
    current release. None when there is none, or when the gateway did not
    update it to its current release (it cannot know the set before)."""
    if (d.ota or {}).get("state") != "committed":
        return None
    current = running_release(gw, d)
    if current is None:
        return None
    history = [u.release for u in gw.ota.table.find(state="committed", device=d.id, limit=100)]
    if current.id not in history:
        return None
    before = history[history.index(current.id) + 1 :]
    previous = gw.ota.releases.get(before[0]) if before else None
    above = [r for r in gw.ota.releases.list(d.model) if r.counter > current.counter]
    if previous is not None:
        matching = [r for r in above if content(r) == content(previous)]
    elif before:
        return None  # (the set before is one this gateway no longer holds)
    else:
        named = {r.reverts.get("0") for r in gw.rollouts.table.all() if r.release == current.id}
        matching = [r for r in above if r.id in named]
    return max(matching, key=lambda r: r.counter, default=None)


def offers(gw: Gateway, d: DeviceRecord) -> dict[str, Any]:
    """What `GET /api/v1/devices/{id}/offers` answers (docs/protocol.md 10)."""
    now_set = current_set(gw, d)
    decisions = DecisionTable(gw.store).of_device(d.id)
    s = SettingsTable(gw.store).get(d.id)
    listed = []
    for rel, state, rollout, update in waiting(gw, d):
        decision = decisions.get(rel.id)
        listed.append(
            described(gw, d, now_set, rel)
            | {
                "state": state,
                "decision": decision.to_dict() if decision is not None else None,
                "rollout": rollout,
                "update": update,
            }
        )
    revert = revert_for(gw, d)
    running = running_release(gw, d)
    return {
        "device": d.id,
        "runs": {
            "counter": counter_of(d),
            "release": running.summary() if running is not None else None,
            "state": (d.ota or {}).get("state"),
            "features": dict(now_set.versions),
        },
        "policy": s.policy,
        "window": None if s.window is None else str(s.window),
        "offers": listed,
        "rollback": described(gw, d, now_set, revert) if revert is not None else None,
    }
