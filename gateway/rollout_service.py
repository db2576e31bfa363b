"""Rollouts in the running gateway (docs/rollouts.md): creating one, and the
loop that takes every active rollout a step at a time (gateway/rollout_plan.py
decides; the judge, gateway/judge.py, says whether a stage does worse than
its control group; this module reads the store, offers updates through the
updater and records every decision before it acts on it).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .cohort import Cohort, DeviceFacts, parse
from .errors import GatewayError, RolloutError
from .judge import Policy, Result, judge_hard
from .rollout_judging import (
    LOOKS,
    Measure,
    Stage,
    failures_only,
    hard_counts,
    look,
    look_due,
    measures,
    policy_for,
    settled,
    verdict_of,
)
from .rollout_plan import (
    DEFAULT_MAX_FAILURE_RATE,
    DEFAULT_SOAK_S,
    DEFAULT_STAGES,
    MEMBER_STATES,
    Member,
    Plan,
    Verdict,
    assign,
    step,
)
from .rollouts import MemberRow, Rollout, RolloutTable, match_reverts, new_id
from .settings import DeviceSettings, SettingsTable
from .store import DeviceRecord
from .updates import Update

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger("permabeta.gateway.rollouts")

TICK_S = 1.0  # real seconds between two steps of every active rollout


def facts(d: DeviceRecord, s: DeviceSettings) -> DeviceFacts:
    """What a cohort tests of a device: its hello and its settings."""
    ota = d.ota or {}
    counter = ota.get("counter")
    caps = d.hello.get("caps")
    return DeviceFacts(
        id=d.id,
        model=d.model,
        board=d.board,
        runtime=d.runtime,
        channel=s.channel,
        tags=s.tags,
        caps=frozenset(c for c in caps if isinstance(c, str)) if isinstance(caps, list) else frozenset(),
        counter=counter if isinstance(counter, int) and not isinstance(counter, bool) else 0,
    )


class RolloutService:
    """The gateway's rollouts (`gw.rollouts`)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.table = RolloutTable(gw.store)
        self.settings = SettingsTable(gw.store)
        self._lock = asyncio.Lock()  # one step at a time: the loop's, or a command's
        self._measured: dict[str, list[Measure]] = {}  # rollout id -> what it is judged on
        self._reconciled: set[str] = set()  # rollouts whose members were matched with the stored updates

    # ---- creating ------------------------------------------------------------

    def create(
        self,
        release_ref: str,
        cohort: str = "all",
        stages: Sequence[float] = DEFAULT_STAGES,
        soak_s: float = DEFAULT_SOAK_S,
        max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
        metrics: Sequence[str] = ("default",),
        reverts: Sequence[str] = (),
        no_revert: bool = False,
        seed: int | None = None,
    ) -> Rollout:
        """Create a running rollout of a release to the devices of its model
        the cohort selects, each assigned to a stage. Raises RolloutError
        (bad_cohort, no_devices, in_rollout, no_revert, wrong_model,
        bad_rollout), ReleaseNotFoundError, OtaDisabledError."""
        ota = self.gw.ota
        ota.require_keys()
        release = ota.releases.find(release_ref)
        expr: Cohort = parse(cohort)
        if no_revert and reverts:
            raise RolloutError("--revert and --no-revert say opposite things: give one")
        settings = self.settings.all()
        chosen: dict[str, int] = {}
        for d in self.gw.store.devices():
            if d.model != release.model:
                continue
            f = facts(d, settings.get(d.id) or DeviceSettings(d.id))
            if f.counter < release.counter and expr.matches(f):
                chosen[d.id] = f.counter
        if not chosen:
            raise RolloutError(
                f"the cohort {expr.text} selects no {release.model} that runs a release below {release.ref}",
                "no_devices",
            )
        busy = [(dev, found[0].id) for dev in chosen if (found := self.table.rollout_of(dev)) is not None]
        # (a halted or completed rollout still acts on its members: the new one takes them)
        taken = [dev for dev in chosen if self.table.rollout_of(dev, ("halted", "completed")) is not None]
        if busy:
            dev, rid = busy[0]
            raise RolloutError(
                f"{len(busy)} devices of the cohort are in a rollout that runs ({dev} in {rid}): "
                "abort it, wait for it, or narrow the cohort",
                "in_rollout",
            )
        revert_map: dict[str, str] = {}
        if not no_revert:
            stored = {r.counter: r for r in ota.releases.list(release.model)}
            revert_map = match_reverts(
                release, [ota.releases.find(x) for x in reverts], chosen.values(), stored
            )
        names = self._metric_names(release, metrics)
        now = self.gw.clock.now()
        seed = secrets.randbits(32) if seed is None else seed
        stage_of = assign(chosen, stages, seed)
        r = Rollout(
            id=new_id(),
            release=release.id,
            ref=release.ref,
            model=release.model,
            cohort=expr.text,
            stages=tuple(stages),
            soak_s=soak_s,
            max_failure_rate=max_failure_rate,
            metrics=names,
            reverts=revert_map,
            seed=seed,
            state="running",
            stage=0,
            stage_started=now,
            created=now,
            updated=now,
        )
        sizes = [sum(1 for s in stage_of.values() if s == k) for k in range(len(stages))]
        for dev in taken:
            self.leave(dev, ("halted", "completed"))
        self.table.create(r, {dev: (stage_of[dev], chosen[dev]) for dev in chosen}, {"stages": sizes})
        log.info("rollout %s of %s to %d devices (%s) created", r.id, r.ref, len(chosen), expr.text)
        return r

    def _metric_names(self, release: Any, metrics: Sequence[str]) -> tuple[str, ...]:
        """The metrics a rollout judges: ("default",) for every one its
        release declares and the health ones; else names known to it."""
        if tuple(metrics) == ("default",):
            return ("default",)
        from .metrics import HEALTH, declared

        known = set(HEALTH) | {d.key for d in declared(self.gw.ota.releases.feature_manifests(release))}
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise RolloutError(
                f"unknown metric {unknown[0]!r}: {release.ref} has {', '.join(sorted(known))}", "bad_rollout"
            )
        return tuple(metrics)

    # ---- commands --------------------------------------------------------------

    async def command(self, rid: str, what: str) -> Rollout:
        """pause, resume, abort or revert a rollout. Raises RolloutError."""
        async with self._lock:
            r = self.table.find(rid)
            now = self.gw.clock.now()
            if what == "pause":
                if r.state != "running":
                    raise RolloutError(f"rollout {r.id} is {r.state}, not running", "wrong_state")
                return self.table.change(r, now, "pause", "paused by the maker", state="paused")
            if what == "resume":
                if r.state != "paused":
                    raise RolloutError(f"rollout {r.id} is {r.state}, not paused", "wrong_state")
                return self.table.change(r, now, "resume", "resumed by the maker", state="running")
            if what == "abort":
                if r.state not in ("running", "paused"):
                    raise RolloutError(f"rollout {r.id} is {r.state}: nothing to abort", "wrong_state")
                r = self.table.change(r, now, "abort", "aborted by the maker", state="aborted")
                await self._cancel_pending(r, "cancelled: rollout aborted")
                return r
            if what == "revert":
                if not r.reverts:
                    raise RolloutError(
                        f"rollout {r.id} has no revert release (created with --no-revert)", "no_revert"
                    )
                if r.state == "halted":
                    return r  # (reverting already)
                r = self.table.change(r, now, "revert", "reverted by the maker", state="halted")
                await self._cancel_pending(r, "cancelled: rollout reverted")
                return r
            raise RolloutError(f"unknown rollout command {what!r}", "bad_request")

    async def _cancel_pending(self, r: Rollout, reason: str) -> None:
        """End the updates of r that have not installed yet."""
        for row in self.table.members(r.id):
            if row.update_id is None or row.left is not None:
                continue
            u = self.gw.ota.active(row.device)
            if u is not None and u.id == row.update_id and u.state in ("offered", "downloading", "deferred"):
                await self.gw.ota.cancel(row.device, reason)

    # ---- the loop --------------------------------------------------------------

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.tick()
            except Exception:
                log.exception("a step of the rollouts failed")

    async def tick(self) -> None:
        """One step of every active rollout."""
        if not self.gw.ota.enabled or not self.gw.connected.is_set():
            return  # (an offer now would fail, and be recorded as a failed update)
        async with self._lock:
            for r in self.table.active():
                await self._step(r)

    def members(self, r: Rollout, rows: Sequence[MemberRow] | None = None) -> list[Member]:
        rows = self.table.members(r.id) if rows is None else rows
        settings = self.settings.all()
        out = []
        for row in rows:
            s = settings.get(row.device) or DeviceSettings(row.device)
            d = self.gw.store.device(row.device)
            offset = d.hello.get("utc_offset_min") if d is not None else None
            ota = (d.ota or {}) if d is not None else {}
            out.append(
                Member(
                    device=row.device,
                    stage=row.stage,
                    online=self.gw.is_online(row.device),
                    policy=s.policy,
                    window=s.window,
                    utc_offset_min=offset if isinstance(offset, int) and not isinstance(offset, bool) else 0,
                    approved=s.approved == r.release,
                    update=self._state_of(row.update_id),
                    revert=self._state_of(row.revert_id),
                    left=row.left is not None,
                    runs=ota.get("manifest") == r.release and ota.get("state") == "committed",
                )
            )
        return out

    def _state_of(self, uid: str | None) -> str | None:
        if uid is None:
            return None
        u = self._update(uid)
        return "failed" if u is None else u.state  # (an update the store lost: not taken again)

    def policy(self, r: Rollout) -> Policy:
        """How r's stages are judged."""
        return policy_for(r.soak_s, r.max_failure_rate)

    def _measures(self, r: Rollout) -> list[Measure]:
        cached = self._measured.get(r.id)
        if cached is None:
            release = self.gw.ota.releases.get(r.release)
            manifests = self.gw.ota.releases.feature_manifests(release) if release is not None else {}
            cached = self._measured[r.id] = measures(manifests, r.metrics)
        return cached

    def _update(self, uid: str | None) -> Update | None:
        if uid is None:
            return None
        try:
            return self.gw.ota.get(uid)
        except GatewayError:
            return None

    async def verdict(
        self, r: Rollout, rows: Sequence[MemberRow], members: Sequence[Member], now: float
    ) -> Verdict | None:
        """The judge on r's current stage (docs/rollouts.md 6): the hard-failure
        rule at every step, the metrics at the looks of the soak; None when
        nothing was judged now. Every look is stored with its numbers."""
        policy = self.policy(r)
        updates = [
            None if m.left else self._update(row.update_id) for row, m in zip(rows, members, strict=True)
        ]
        hard = hard_counts(updates)
        hv = judge_hard(hard, policy)
        if hv.result is Result.FAIL:
            return Verdict(halt=True, passing=False, reason=hv.reason)
        done = self.table.looks(r.id, r.stage)
        due = look_due(r, done, now)
        if due is None:
            return None
        k, final = due
        treated = tuple(
            (row.device, u.finished)
            for row, u in zip(rows, updates, strict=True)
            if u is not None and u.state == "committed" and u.finished is not None
        )
        control = tuple(
            row.device
            for row, m in zip(rows, members, strict=True)
            if row.stage > r.stage and row.update_id is None and not m.left
        )
        # (members that failed or rolled back will never be compared)
        reached = sum(
            1
            for row, m in zip(rows, members, strict=True)
            if row.stage <= r.stage and not m.left and m.update not in ("failed", "rolled_back")
        )
        why = failures_only(reached, len(control), done, policy.min_devices)
        if why is not None:
            numbers = {"look": k, "looks": LOOKS, "final": final, "hard": hv.to_dict(), "metrics": []}
            reason = f"{why}: failures only" + (f"; {hv.reason}" if hv.reason else "")
            self.table.decide(r, now, "look", hv.result.value, reason, numbers)
            return Verdict(halt=False, passing=final, reason=hv.reason)
        # looks after the soak judge only what a final look left waiting
        earlier = settled(self.table.look_numbers(r.id, r.stage)) if done >= LOOKS else {}
        stage = Stage(r.stage_started, treated, control, hard, earlier)
        try:
            ms = self._measures(r)
            j = await asyncio.to_thread(look, self.gw.store.path, stage, ms, policy, k, final, now)
        except GatewayError as exc:
            log.error("rollout %s: the judge could not look: %s", r.id, exc)
            return None
        self.table.decide(r, now, "look", j.result.value, "; ".join(j.reasons), j.to_dict())
        return verdict_of(j)

    def _reconcile(self, r: Rollout, rows: Sequence[MemberRow]) -> list[MemberRow]:
        """Once per gateway process: a member offered the release (or its
        revert) just before the gateway stopped, whose update was stored but
        not yet recorded in its row, gets its update back, and is not
        offered a second time."""
        out = []
        reverts = set(r.reverts.values())
        for row in rows:
            if row.update_id is None or (row.revert_id is None and r.state == "halted"):
                for u in self.gw.ota.table.find(device=row.device, limit=5):
                    if u.started < r.created:
                        break
                    if u.release == r.release and row.update_id is None:
                        row = MemberRow(**(row.to_dict() | {"update_id": u.id, "offered": u.started}))
                    elif u.release in reverts and row.revert_id is None and row.update_id is not None:
                        row = MemberRow(**(row.to_dict() | {"revert_id": u.id}))
                    else:
                        continue
                    self.table.set_member(row)
            out.append(row)
        return out

    async def _step(self, r: Rollout) -> None:
        now = self.gw.clock.now()
        rows = self.table.members(r.id)
        if r.id not in self._reconciled:
            rows = self._reconcile(r, rows)
            self._reconciled.add(r.id)
        members = self.members(r, rows)
        verdict = await self.verdict(r, rows, members, now) if r.state == "running" else None
        plan = step(
            r.state, r.stage, r.stage_started, len(r.stages), r.soak_s, members, verdict, now, bool(r.reverts)
        )
        await self._apply(r, rows, plan, now)

    async def _apply(self, r: Rollout, rows: Sequence[MemberRow], plan: Plan, now: float) -> None:
        by_id = {row.device: row for row in rows}
        if plan.state == "halted":
            r = self.table.change(
                r, now, "halt", plan.reason, plan.counts, state="halted", reason=plan.reason
            )
            log.warning("rollout %s halted: %s", r.id, plan.reason)
            await self._cancel_pending(r, "cancelled: rollout halted")
            return
        if plan.stage is not None:
            r = self.table.change(
                r, now, "stage", plan.reason, plan.counts, stage=plan.stage, stage_started=now
            )
            log.info("rollout %s: stage %d of %d begins", r.id, r.stage + 1, len(r.stages))
        elif plan.state is not None:
            r = self.table.change(r, now, plan.state, plan.reason, plan.counts, state=plan.state)
        for dev in plan.offer:
            row = by_id[dev]
            try:
                u = await self.gw.ota.start(dev, r.release, idle=True)
            except GatewayError as exc:
                log.info("rollout %s: %s not offered now: %s", r.id, dev, exc)
                continue
            self.table.set_member(MemberRow(**(row.to_dict() | {"update_id": u.id, "offered": now})))
        for dev in plan.revert:
            row = by_id[dev]
            target = r.reverts.get(str(row.from_counter))
            if target is None:
                continue
            try:
                u = await self.gw.ota.start(dev, target, idle=True)
            except GatewayError as exc:
                log.info("rollout %s: %s not reverted now: %s", r.id, dev, exc)
                continue
            self.table.set_member(MemberRow(**(row.to_dict() | {"revert_id": u.id})))

    # ---- a device leaves -----------------------------------------------------

    def leave(
        self, dev: str, states: tuple[str, ...] = ("running", "paused", "halted", "completed")
    ) -> str | None:
        """A device updated by hand, or taken by a new rollout, leaves the
        rollout it is in (the id of that rollout, or None)."""
        found = self.table.rollout_of(dev, states)
        if found is None:
            return None
        r, row = found
        self.table.set_member(MemberRow(**(row.to_dict() | {"left": self.gw.clock.now()})))
        return r.id

    # ---- status ------------------------------------------------------------------

    def status(self, r: Rollout) -> dict[str, Any]:
        """What `rollout status` shows: the rollout, its members per stage and
        state, and its decisions (the judge's numbers among them)."""
        now = self.gw.clock.now()
        members = self.members(r)
        stages = []
        for k in range(len(r.stages)):
            counts = dict.fromkeys(MEMBER_STATES, 0)
            for m in members:
                if m.stage == k:
                    counts[m.shown(r.stage, now)] += 1
            stages.append({"stage": k + 1, "fraction": r.stages[k], "counts": counts})
        decisions = self.table.decisions(r.id)
        looks = [d for d in decisions if d["kind"] == "look"]
        return {
            "rollout": r.to_dict(),
            "now": now,
            "stages": stages,
            "judgement": looks[-1] if looks else None,
            "decisions": [d for d in decisions if d["kind"] != "look"][-20:],
        }
