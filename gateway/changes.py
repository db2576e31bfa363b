"""What an update changes, as its owner is shown it before saying yes
(docs/rollouts.md 8.1): the features added, changed (from one version to
another) and removed, what the update may read, drive and publish that the
device's features may not today (and what they no longer may), and the
hardware it needs that the device lacks. Pure: the sets are given.

A device's current set is the release it runs (its signed manifest lists
each feature's version and permissions) or, for the set flashed at the
factory, its hello's features with the permissions of the firmware's own
feature manifests of the same version; a feature whose permissions are not
known is named in `unknown`, and what it may do counts as nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ota.release import PERMISSION_KINDS

Permissions = dict[str, tuple[str, ...]]  # kind (reads, drives, publishes) -> names


@dataclass(frozen=True)
class FeatureSet:
    """Features by name: their versions, and their permissions where known."""

    versions: Mapping[str, str]
    permissions: Mapping[str, Permissions]  # only the features whose permissions are known

    def granted(self) -> Permissions:
        """Every name each kind of permission covers, over all its features."""
        return {
            k: tuple(sorted({x for p in self.permissions.values() for x in p.get(k, ())}))
            for k in PERMISSION_KINDS
        }


def _permissions(d: Any) -> Permissions:
    d = d if isinstance(d, Mapping) else {}
    lists = {k: d.get(k) if isinstance(d.get(k), list) else [] for k in PERMISSION_KINDS}
    return {k: tuple(x for x in lists[k] if isinstance(x, str)) for k in PERMISSION_KINDS}


def of_release(body: Mapping[str, Any]) -> FeatureSet:
    """The set a release installs, from its signed manifest."""
    feats = body.get("features")
    feats = feats if isinstance(feats, Mapping) else {}
    return FeatureSet(
        {n: str(f.get("version")) for n, f in feats.items() if isinstance(f, Mapping)},
        {n: _permissions(f.get("permissions")) for n, f in feats.items() if isinstance(f, Mapping)},
    )


def of_hello(features: Mapping[str, Any], manifests: Mapping[str, Mapping[str, Any]]) -> FeatureSet:
    """The set a device says it runs (its hello's features), each feature's
    permissions from manifests (feature manifests by name) where the
    version is the same."""
    versions = {n: str(f.get("version")) for n, f in features.items() if isinstance(f, Mapping)}
    perms = {
        n: _permissions(manifests[n].get("permissions"))
        for n, v in versions.items()
        if n in manifests and manifests[n].get("version") == v
    }
    return FeatureSet(versions, perms)


@dataclass(frozen=True)
class Changes:
    added: tuple[tuple[str, str], ...]  # (feature, version)
    changed: tuple[tuple[str, str, str], ...]  # (feature, from, to)
    removed: tuple[tuple[str, str], ...]
    unchanged: tuple[tuple[str, str], ...]
    new: Permissions  # what the update may that the device's features may not today
    no_longer: Permissions  # what they may today and the update may not
    unknown: tuple[str, ...]  # features of today whose permissions are not known
    lacks: tuple[str, ...]  # hardware the update needs that the device does not have

    def summary(self) -> str:
        """One line: `new: reads humidity; publishes comfort. no longer: drives relay`."""
        parts = []
        for word, perms in (("new", self.new), ("no longer", self.no_longer)):
            said = "; ".join(f"{k} {', '.join(perms[k])}" for k in PERMISSION_KINDS if perms.get(k))
            if said:
                parts.append(f"{word}: {said}")
        return ". ".join(parts) or "no new permissions"

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": {
                "added": [{"name": n, "version": v} for n, v in self.added],
                "changed": [{"name": n, "from": a, "to": b} for n, a, b in self.changed],
                "removed": [{"name": n, "version": v} for n, v in self.removed],
                "unchanged": [{"name": n, "version": v} for n, v in self.unchanged],
            },
            "permissions": {
                k: {"new": list(self.new[k]), "no_longer": list(self.no_longer[k])} for k in PERMISSION_KINDS
            },
            "unknown": list(self.unknown),
            "lacks": list(self.lacks),
            "summary": self.summary(),
        }


def compare(current: FeatureSet, update: FeatureSet, requires: Iterable[str], caps: Iterable[str]) -> Changes:
    """What installing update changes on a device running current, whose
    board has caps; requires: the hardware the update needs."""
    old, new = current.versions, update.versions
    before, after = current.granted(), update.granted()
    have = set(caps)
    return Changes(
        added=tuple((n, new[n]) for n in sorted(new.keys() - old.keys())),
        changed=tuple((n, old[n], new[n]) for n in sorted(new.keys() & old.keys()) if old[n] != new[n]),
        removed=tuple((n, old[n]) for n in sorted(old.keys() - new.keys())),
        unchanged=tuple((n, new[n]) for n in sorted(new.keys() & old.keys()) if old[n] == new[n]),
        new={k: tuple(x for x in after[k] if x not in before[k]) for k in PERMISSION_KINDS},
        no_longer={k: tuple(x for x in before[k] if x not in after[k]) for k in PERMISSION_KINDS},
        unknown=tuple(sorted(n for n in old if n not in current.permissions)),
        lacks=tuple(sorted({str(c) for c in requires} - have)),
    )
