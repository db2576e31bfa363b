"""Rollouts as the gateway keeps them (docs/rollouts.md): the rollout, its
members (each device of the cohort with its stage, its update and its
revert), and every decision taken with its reason and numbers. Tables
``rollouts``, ``rollout_members`` and ``rollout_decisions`` (schema version 6).
Everything a rollout does is written here before it is done, so that a
gateway restarted in the middle of a stage goes on where it was.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import RolloutError
from .releases import StoredRelease
from .rollout_plan import REVERT_TRIES
from .store import Store

_SCHEMA = 6  # the store's version that has the tables
_FORGOTTEN_SCHEMA = 11  # ... and the counts of its forgotten members
_MEMBER_COLUMNS = ("update_id", "offered", "revert_id", "left")  # what a step writes of a member


@dataclass(frozen=True)
class Rollout:
    id: str
    release: str  # the release id
    ref: str  # MODEL@COUNTER of the release
    model: str
    cohort: str  # the cohort's expression, canonical (gateway/cohort.py)
    stages: tuple[float, ...]  # cumulative fractions of the cohort, the last 1.0
    soak_s: float
    max_failure_rate: float
    metrics: tuple[str, ...]  # the metrics judged; ("default",): every one declared and the health ones
    reverts: dict[str, str]  # str(counter the member ran) -> revert release id; {} with --no-revert
    seed: int
    state: str  # gateway/rollout_plan.py STATES
    stage: int  # 0 first
    stage_started: float
    created: float
    updated: float
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = list(self.stages)
        d["metrics"] = list(self.metrics)
        return d

    @classmethod
    def from_row(cls, row: Any) -> Rollout:
        return cls(
            id=row["id"],
            release=row["release"],
            ref=row["ref"],
            model=row["model"],
            cohort=row["cohort"],
            stages=tuple(json.loads(row["stages"])),
            soak_s=row["soak"],
            max_failure_rate=row["max_failure_rate"],
            metrics=tuple(json.loads(row["metrics"])),
            reverts=dict(json.loads(row["reverts"])),
            seed=row["seed"],
            state=row["state"],
            stage=row["stage"],
            stage_started=row["stage_started"],
            created=row["created"],
            updated=row["updated"],
            reason=row["reason"],
        )


@dataclass(frozen=True)
class MemberRow:
    """One device of a rollout, as stored."""

    rollout: str
    device: str
    stage: int
    from_counter: int  # the release counter it ran when the rollout was created
    update_id: str | None = None  # its update to the release
    offered: float | None = None
    revert_id: str | None = None  # its update to the revert release
    left: float | None = None  # when it was updated by hand and left the rollout

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Gone:
    """What a rollout counted of `count` members whose data is forgotten
    (gateway/footprint.py): their stage, what they showed, and their updates
    to the release as the hard-failure rule counts them. Names no device."""

    rollout: str
    stage: int
    state: str  # rollout_plan.MEMBER_STATES
    count: int = 1
    offered: int = 0
    failed: int = 0
    rolled_back: int = 0


def spent_reason(reasons: Mapping[str, str], forgotten: int = 0, others: int = 0) -> str:
    """The reason of a `revert_failed` decision: how many members, the first
    five by name with why their last revert failed, and how many more were
    forgotten since, or are not named (others: in a device's export)."""
    named = [f"{dev} ({why})" for dev, why in list(reasons.items())[:5]]
    if len(reasons) > 5:
        named.append("...")
    if others:
        named.append(f"{others} other" + ("s" if others > 1 else ""))
    if forgotten:
        named.append(f"{forgotten} forgotten")
    n = len(reasons) + others + forgotten
    return f"{n} not reverted after {REVERT_TRIES} tries: {', '.join(named)}"


def content(release: StoredRelease) -> frozenset[tuple[str, str]]:
    """What a release installs: each file's path and SHA-256, and the
    runtime and MicroPython image it carries."""
    image = (release.body.get("image") or {}).get("sha256")
    extra = {("runtime", str(release.body.get("runtime"))), ("image", str(image))}
    return frozenset({(e.path, e.sha256) for e in release.entries} | extra)


def match_reverts(
    release: StoredRelease,
    reverts: Iterable[StoredRelease],
    counters: Iterable[int],
    stored: Mapping[int, StoredRelease],
    factory_ids: Iterable[str] = (),
) -> dict[str, str]:
    """Which revert release takes back the members that ran each counter.
    A revert is the set those members ran, signed again with a counter above
    the rollout's: it covers counter c when it installs what release c of
    the model installs; one that matches no stored release covers the
    factory set (counter 0), whose files the gateway never saw; failing
    such a one, one that installs what an earlier rollout's revert of the
    factory set installs (factory_ids: those reverts), stored since.
    Raises RolloutError (code 'no_revert') when a counter has none."""
    ids = set(factory_ids)
    factory = {content(s) for s in stored.values() if s.id in ids}
    out: dict[str, str] = {}
    unmatched: list[StoredRelease] = []
    factory_again: list[StoredRelease] = []  # (matched, and installs what a factory revert did)
    for r in reverts:
        if r.model != release.model:
            raise RolloutError(
                f"the revert {r.ref} is for {r.model}, the rollout for {release.model}", "wrong_model"
            )
        if r.counter <= release.counter:
            raise RolloutError(
                f"the revert {r.ref} has counter {r.counter}: a device that took {release.ref} takes only a "
                f"higher one (sign the set it ran again with a counter above {release.counter})",
                "no_revert",
            )
        # (members run releases below the rollout's: the revert itself is not one)
        found = [c for c, s in stored.items() if c < release.counter and content(s) == content(r)]
        for c in found:
            out[str(c)] = r.id
        if not found:
            unmatched.append(r)
        elif content(r) in factory:
            factory_again.append(r)
    # (the set at counter 0 is what boards were provisioned with, which may change from one batch
    # to the next: a revert the maker gave that matches nothing is the factory set of today's)
    if unmatched or factory_again:
        out["0"] = (unmatched or factory_again)[0].id
    missing = sorted(c for c in set(counters) if str(c) not in out)
    if missing:
        named = ", ".join("the factory set" if c == 0 else f"{release.model}@{c}" for c in missing)
        raise RolloutError(
            f"no revert for the members that run {named}: give --revert for each set the cohort runs "
            "(the same set signed with a higher counter), narrow the cohort with release=..., "
            "or say --no-revert",
            "no_revert",
        )
    return out


class RolloutTable:
    """The rollout tables."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _ready(self) -> bool:
        return self.store.schema >= _SCHEMA  # (an old database read as it is has none)

    def create(self, r: Rollout, members: Mapping[str, tuple[int, int]], numbers: dict[str, Any]) -> None:
        """Store a new rollout and its members (device -> (stage, counter it runs))."""
        d = r.to_dict()
        with self.store.transaction():
            self.store.db.execute(
                """INSERT INTO rollouts (id, release, ref, model, cohort, stages, soak, max_failure_rate,
                       metrics, reverts, seed, state, stage, stage_started, created, updated, reason)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    r.id,
                    r.release,
                    r.ref,
                    r.model,
                    r.cohort,
                    json.dumps(d["stages"]),
                    r.soak_s,
                    r.max_failure_rate,
                    json.dumps(d["metrics"]),
                    json.dumps(r.reverts, sort_keys=True),
                    r.seed,
                    r.state,
                    r.stage,
                    r.stage_started,
                    r.created,
                    r.updated,
                    r.reason,
                ),
            )
            self.store.db.executemany(
                "INSERT INTO rollout_members (rollout, device, stage, from_counter) VALUES (?, ?, ?, ?)",
                [(r.id, dev, stage, counter) for dev, (stage, counter) in sorted(members.items())],
            )
            self._decide(r.id, r.created, 0, "created", r.state, f"{len(members)} devices", numbers)

    def get(self, rid: str) -> Rollout | None:
        if not self._ready():
            return None
        row = self.store.db.execute("SELECT * FROM rollouts WHERE id = ?", (rid,)).fetchone()
        return None if row is None else Rollout.from_row(row)

    def find(self, ref: str) -> Rollout:
        """A rollout by its id or a prefix of 4+ characters. Raises RolloutError (unknown_rollout)."""
        ref = ref.strip().lower()
        rows = []
        if self._ready() and 4 <= len(ref) <= 12 and ref.isalnum():
            rows = self.store.db.execute(
                "SELECT * FROM rollouts WHERE substr(id, 1, ?) = ?", (len(ref), ref)
            ).fetchall()
        if len(rows) != 1:
            why = "is the start of several" if rows else "names no rollout"
            raise RolloutError(f"{ref[:40]!r} {why}", "unknown_rollout")
        return Rollout.from_row(rows[0])

    def all(self) -> list[Rollout]:
        if not self._ready():
            return []
        return [Rollout.from_row(r) for r in self.store.db.execute("SELECT * FROM rollouts ORDER BY created")]

    def active(self, states: tuple[str, ...] = ("running", "halted", "completed")) -> list[Rollout]:
        """Rollouts in one of states; by default those that may still act:
        running, halted (reverting) or completed (late members)."""
        if not self._ready():
            return []
        rows = self.store.db.execute(
            f"SELECT * FROM rollouts WHERE state IN ({','.join('?' * len(states))}) ORDER BY created",
            states,
        )
        return [Rollout.from_row(r) for r in rows]

    def members(self, rid: str) -> list[MemberRow]:
        rows = self.store.db.execute(
            "SELECT * FROM rollout_members WHERE rollout = ? ORDER BY stage, device", (rid,)
        ).fetchall()
        return [MemberRow(**dict(r)) for r in rows]

    def member(self, rid: str, dev: str) -> MemberRow | None:
        """One member's row as stored now."""
        row = self.store.db.execute(
            "SELECT * FROM rollout_members WHERE rollout = ? AND device = ?", (rid, dev)
        ).fetchone()
        return None if row is None else MemberRow(**dict(row))

    def rollout_of(
        self, dev: str, states: tuple[str, ...] = ("running", "paused")
    ) -> tuple[Rollout, MemberRow] | None:
        """The rollout in one of states (default: running or paused) the
        device is a member of, and has not left, if any."""
        if not self._ready():
            return None
        row = self.store.db.execute(
            f"""SELECT m.* FROM rollout_members m JOIN rollouts r ON r.id = m.rollout
               WHERE m.device = ? AND m."left" IS NULL AND r.state IN ({",".join("?" * len(states))})
               ORDER BY r.created DESC""",
            (dev, *states),
        ).fetchone()
        if row is None:
            return None
        r = self.get(row["rollout"])
        assert r is not None  # joined on it
        return r, MemberRow(**dict(row))

    def memberships(self, dev: str) -> list[MemberRow]:
        """dev's rows in every rollout, whatever its state."""
        if not self._ready():
            return []
        rows = self.store.db.execute(
            "SELECT * FROM rollout_members WHERE device = ? ORDER BY rollout", (dev,)
        ).fetchall()
        return [MemberRow(**dict(r)) for r in rows]

    def forget(self, dev: str, gone: Iterable[Gone]) -> int:
        """Count each rollout's member dev as gone says and take its row
        out; the decisions that named it (a revert that failed) count it
        without its name. In the caller's transaction. The rows removed."""
        for g in gone:
            self.store.db.execute(
                """INSERT INTO rollout_forgotten (rollout, stage, state, count, offered, failed, rolled_back)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (rollout, stage, state) DO UPDATE
                       SET count = rollout_forgotten.count + excluded.count,
                       offered = rollout_forgotten.offered + excluded.offered,
                       failed = rollout_forgotten.failed + excluded.failed,
                       rolled_back = rollout_forgotten.rolled_back + excluded.rolled_back""",
                (g.rollout, g.stage, g.state, g.count, g.offered, g.failed, g.rolled_back),
            )
        rows = self.store.db.execute(
            "SELECT id, numbers FROM rollout_decisions WHERE kind = 'revert_failed'"
            f" AND {self.store.db.json_has_key('numbers', 'devices')}",
            (dev,),
        ).fetchall()
        for row in rows:
            numbers = json.loads(row["numbers"])
            numbers["devices"].pop(dev)
            numbers["forgotten"] = int(numbers.get("forgotten", 0)) + 1
            self.store.db.execute(
                "UPDATE rollout_decisions SET numbers = ?, reason = ? WHERE id = ?",
                (
                    json.dumps(numbers, sort_keys=True),
                    spent_reason(numbers["devices"], numbers["forgotten"]),
                    row["id"],
                ),
            )
        return self.store.db.execute("DELETE FROM rollout_members WHERE device = ?", (dev,)).rowcount

    def forgotten(self, rid: str) -> list[Gone]:
        """What the rollout counted of its forgotten members: one Gone per
        stage and state."""
        if self.store.schema < _FORGOTTEN_SCHEMA:
            return []
        rows = self.store.db.execute(
            "SELECT * FROM rollout_forgotten WHERE rollout = ? ORDER BY stage, state", (rid,)
        ).fetchall()
        return [
            Gone(rid, r["stage"], r["state"], r["count"], r["offered"], r["failed"], r["rolled_back"])
            for r in rows
        ]

    def set_member(self, rid: str, dev: str, **columns: str | float | None) -> bool:
        """Write the columns given (update_id, offered, revert_id, left) of a
        member that has not left the rollout, and only those: a write made
        from a row read before an await never undoes what was written
        meanwhile (a device updated by hand stays left, and keeps the time
        it left). False if the member has left (nothing written)."""
        unknown = sorted(set(columns) - set(_MEMBER_COLUMNS))
        if unknown or not columns:
            raise TypeError(f"not columns a step writes of a member: {unknown or 'none given'}")
        sets = ", ".join(f'"{c}" = ?' for c in columns)
        cur = self.store.db.execute(
            f'UPDATE rollout_members SET {sets} WHERE rollout = ? AND device = ? AND "left" IS NULL',
            (*columns.values(), rid, dev),
        )
        return cur.rowcount > 0

    def rejoin(self, rid: str, dev: str, left: float) -> None:
        """A member that left at `left` is back in the rollout (the update by
        hand it left for did not start); one that left again since stays out."""
        self.store.db.execute(
            'UPDATE rollout_members SET "left" = NULL WHERE rollout = ? AND device = ? AND "left" = ?',
            (rid, dev, left),
        )

    def change(
        self,
        r: Rollout,
        now: float,
        kind: str,
        why: str,
        numbers: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Rollout:
        """r with fields changed (state, stage, stage_started, reason),
        stored with the decision (kind, why, numbers) that changed it."""
        new = replace(r, updated=now, **fields)
        with self.store.transaction():
            self.store.db.execute(
                "UPDATE rollouts SET state = ?, stage = ?, stage_started = ?, updated = ?, reason = ?"
                " WHERE id = ?",
                (new.state, new.stage, new.stage_started, new.updated, new.reason, r.id),
            )
            self._decide(r.id, now, new.stage, kind, new.state, why, numbers or {})
        return new

    def decide(
        self, r: Rollout, now: float, kind: str, result: str, reason: str, numbers: dict[str, Any]
    ) -> None:
        """Record a decision that changes nothing of the rollout (a look of the judge)."""
        self._decide(r.id, now, r.stage, kind, result, reason, numbers)

    def _decide(
        self, rid: str, now: float, stage: int, kind: str, result: str, reason: str, numbers: dict[str, Any]
    ) -> None:
        self.store.db.execute(
            "INSERT INTO rollout_decisions (rollout, at, stage, kind, result, reason, numbers)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rid, now, stage, kind, result, reason, json.dumps(numbers, sort_keys=True, allow_nan=False)),
        )

    def looks(self, rid: str, stage: int) -> int:
        """How many looks of the judge the stage has had."""
        row = self.store.db.execute(
            "SELECT count(*) FROM rollout_decisions WHERE rollout = ? AND stage = ? AND kind = 'look'",
            (rid, stage),
        ).fetchone()
        return int(row[0])

    def look_numbers(self, rid: str, stage: int) -> list[dict[str, Any]]:
        """The numbers of the stage's looks, oldest first."""
        rows = self.store.db.execute(
            "SELECT numbers FROM rollout_decisions"
            " WHERE rollout = ? AND stage = ? AND kind = 'look' ORDER BY id",
            (rid, stage),
        ).fetchall()
        return [json.loads(r[0] or "{}") for r in rows]

    def decisions(self, rid: str, limit: int | None = 50, kind: str | None = None) -> list[dict[str, Any]]:
        """The last `limit` (None: all) decisions of the rollout, of that
        kind only if given, oldest first."""
        rows = self.store.db.execute(
            "SELECT * FROM rollout_decisions WHERE rollout = ? AND (CAST(? AS TEXT) IS NULL OR kind = ?)"
            " ORDER BY id DESC LIMIT ?",
            (rid, kind, kind, 2**62 if limit is None else limit),
        ).fetchall()
        out = []
        for r in reversed(rows):
            d = dict(r)
            d["numbers"] = json.loads(d["numbers"] or "{}")
            out.append(d)
        return out


def new_id() -> str:
    return secrets.token_hex(6)
