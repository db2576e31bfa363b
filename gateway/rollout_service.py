"""Rollouts in the running gateway (docs/rollouts.md): creating one, and the
loop that takes every active rollout a step at a time (gateway/rollout_plan.py
decides; the judge, gateway/judge.py, says whether a stage does worse than
its control group; this module reads the store, offers updates through the
updater and records every decision before it acts on it).

A running rollout is stepped every second; a halted or completed one only
while it may still act on a member, every FINAL_TICK_S of the gateway's
clock and at once when such a member comes online (docs/rollouts.md 9).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .cohort import Cohort, DeviceFacts, parse
from .decisions import CANCELS, DecisionTable
from .errors import GatewayError, RolloutError
from .judge import HardCounts, Policy, Result, judge_hard
from .rollout_judging import (
    BY_ROLLOUT,
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
from .rollouts import Gone, MemberRow, Rollout, RolloutTable, match_reverts, new_id, spent_reason
from .settings import DeviceSettings, SettingsTable
from .store import DeviceRecord
from .updates import Update

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger("permabeta.gateway.rollouts")

TICK_S = 1.0  # real seconds between two steps of every running rollout
# gateway-clock seconds between two steps of a halted or completed rollout
# that has members it may still act on (and at once when one comes online)
FINAL_TICK_S = 30.0
NOT_INSTALLED = ("offered", "downloading", "deferred")  # an update's states before its device stages it
_LEFT_FROM = ("running", "paused", "halted", "completed")  # the rollouts that may still act on a member


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


def running(ota: Any) -> str | None:
    """The release a device's hello (its `ota` part) says it runs, committed."""
    if isinstance(ota, Mapping) and ota.get("state") == "committed":
        manifest = ota.get("manifest")
        return manifest if isinstance(manifest, str) else None
    return None


@dataclass
class _Final:
    """What the last step of a halted or completed rollout left to do."""

    state: str
    at: float  # the gateway's time of that step
    unsettled: frozenset[str]  # the members it may still act on
    release: str | None  # (halted, with reverts) the release it takes back from the devices running it
    woken: bool = False  # one of those came online: step it at the next tick


class RolloutService:
    """The gateway's rollouts (`gw.rollouts`)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.table = RolloutTable(gw.store)
        self.settings = SettingsTable(gw.store)
        self.decisions = DecisionTable(gw.store)
        self.stats: dict[str, int] = {"steps": 0}
        self._lock = asyncio.Lock()  # one step at a time: the loop's, or a command's
        self._measured: dict[str, list[Measure]] = {}  # rollout id -> what it is judged on
        self._reconciled: set[str] = set()  # rollouts whose members were matched with the stored updates
        self._swept = False  # the aborted rollouts reconciled, once per process
        self._final: dict[str, _Final] = {}  # halted and completed rollouts, by id
        self._spent: dict[str, set[str]] = {}  # rollout id -> members recorded as revert_failed

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
            factory = {r.reverts["0"] for r in self.table.all() if "0" in r.reverts}
            revert_map = match_reverts(
                release, [ota.releases.find(x) for x in reverts], chosen.values(), stored, factory
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
            if u is not None and u.id == row.update_id and u.state in NOT_INSTALLED:
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
        """A step of every running rollout, and of every halted or completed
        one that is due (`_due`); the first time, the aborted rollouts are
        reconciled (`_reconcile`)."""
        if not self.gw.ota.enabled or not self.gw.connected.is_set():
            return  # (an offer now would fail, and be recorded as a failed update)
        async with self._lock:
            if not self._swept:
                for r in self.table.active(("aborted",)):
                    await self._rows(r)
                self._swept = True
            now = self.gw.clock.now()
            for r in self.table.active():
                if r.state == "running" or self._due(r, now):
                    await self._step(r)

    def _due(self, r: Rollout, now: float) -> bool:
        """Whether a halted or completed rollout is stepped now: the first
        time this process sees it in that state, when a member it may act on
        came online, and every FINAL_TICK_S while it has such members; never
        once it has none."""
        f = self._final.get(r.id)
        if f is None or f.state != r.state or f.woken:
            return True
        return bool(f.unsettled) and now - f.at >= FINAL_TICK_S

    def wake(self, dev: str, hello: Mapping[str, Any] | None = None) -> None:
        """dev came online, or said hello: a halted or completed rollout that
        may act on it is stepped at the next tick, not at its slower pace; so
        is a halted one whose release the hello says dev runs (a member whose
        update the halt cancelled too late)."""
        runs = running(hello.get("ota")) if hello is not None else None
        for f in self._final.values():
            if dev in f.unsettled or (runs is not None and runs == f.release):
                f.woken = True

    def members(self, r: Rollout, rows: Sequence[MemberRow] | None = None) -> list[Member]:
        rows = self.table.members(r.id) if rows is None else rows
        settings = self.settings.all()
        decided = self.decisions.of_release(r.release)
        # (every revert offered counts, its row records the last: from the updates)
        reverting = any(row.revert_id is not None for row in rows)
        tries = self.gw.ota.table.offers(set(r.reverts.values()), r.created) if reverting else {}
        out = []
        for row in rows:
            s = settings.get(row.device) or DeviceSettings(row.device)
            d = self.gw.store.device(row.device)
            offset = d.hello.get("utc_offset_min") if d is not None else None
            u, v = self._update(row.update_id), self._update(row.revert_id)
            owner = decided.get(row.device)
            out.append(
                Member(
                    device=row.device,
                    stage=row.stage,
                    online=self.gw.is_online(row.device),
                    policy=s.policy,
                    window=s.window,
                    utc_offset_min=offset if isinstance(offset, int) and not isinstance(offset, bool) else 0,
                    decision=owner.decision if owner is not None else None,
                    until=owner.until if owner is not None else None,
                    update=_state(row.update_id, u),
                    cancelled=u is not None
                    and u.state == "failed"
                    and (u.reason or "").startswith(BY_ROLLOUT),
                    revert=_state(row.revert_id, v),
                    left=row.left is not None,
                    runs=d is not None and running(d.ota) == r.release,
                    reverts=tries.get(row.device, 0),
                    revert_ended=v.finished if v is not None else None,
                )
            )
        return out

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
        hard = _with_forgotten(hard_counts(updates), self.table.forgotten(r.id))
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
        # (members that failed, rolled back or were declined will never be compared)
        reached = sum(
            1
            for row, m in zip(rows, members, strict=True)
            if row.stage <= r.stage
            and not m.left
            and not m.declined()
            and m.update not in ("failed", "rolled_back")
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
            j = await asyncio.to_thread(look, self.gw.store.where, stage, ms, policy, k, final, now)
        except GatewayError as exc:
            log.error("rollout %s: the judge could not look: %s", r.id, exc)
            return None
        self.table.decide(r, now, "look", j.result.value, "; ".join(j.reasons), j.to_dict())
        return verdict_of(j)

    async def _rows(self, r: Rollout) -> list[MemberRow]:
        """r's members' rows, reconciled with the store the first time in
        this process (`_reconcile`)."""
        rows = self.table.members(r.id)
        if r.id not in self._reconciled:
            rows = await self._reconcile(r, rows)
            self._reconciled.add(r.id)
        return rows

    async def _reconcile(self, r: Rollout, rows: Sequence[MemberRow]) -> list[MemberRow]:
        """Once per gateway process: a member offered the release (or its
        revert) just before the gateway stopped, whose update was stored but
        not yet recorded in its row, gets its update back, and is not
        offered a second time. A halted or aborted rollout then cancels the
        offers of its release not installed yet: a gateway stopped between
        storing the halt (or the abort) and cancelling them left them
        pending."""
        out = []
        reverts = set(r.reverts.values())
        for row in rows:
            if row.left is None and (row.update_id is None or r.state == "halted"):
                latest = self.gw.ota.table.find(device=row.device, limit=5)
                # (an offer the owner's never or later ended is not the member's: it is offered anew)
                found = [u for u in latest if u.started >= r.created and u.reason not in CANCELS.values()]
                offer = next((u for u in found if u.release == r.release), None)
                back = next((u for u in found if u.release in reverts), None)  # (the newest)
                if row.update_id is None and offer is not None:
                    row = replace(row, update_id=offer.id, offered=offer.started)
                    self.table.set_member(r.id, row.device, update_id=offer.id, offered=offer.started)
                if row.update_id is not None and back is not None and back.id != row.revert_id:
                    row = replace(row, revert_id=back.id)
                    self.table.set_member(r.id, row.device, revert_id=back.id)
            out.append(row)
        if r.state in ("halted", "aborted"):
            await self._cancel_pending(r, f"cancelled: rollout {r.state}")
        return out

    async def _step(self, r: Rollout) -> None:
        now = self.gw.clock.now()
        rows = await self._rows(r)
        members = self.members(r, rows)
        verdict = await self.verdict(r, rows, members, now) if r.state == "running" else None
        plan = step(
            r.state, r.stage, r.stage_started, len(r.stages), r.soak_s, members, verdict, now, bool(r.reverts)
        )
        self.stats["steps"] += 1
        forgotten = self.table.forgotten(r.id)
        if forgotten:  # (the counts a decision records add up to the whole cohort)
            counts = dict(plan.counts)
            for g in forgotten:
                counts[g.state] += g.count
            plan = replace(plan, counts=counts)
        if r.state in ("halted", "completed"):
            self._settle(r, plan, now)
        await self._apply(r, plan, now)

    def _settle(self, r: Rollout, plan: Plan, now: float) -> None:
        """Note what a step of a halted or completed rollout left to do (`_due`)."""
        before = self._final.get(r.id)
        self._final[r.id] = _Final(
            r.state, now, frozenset(plan.unsettled), r.release if r.state == "halted" and r.reverts else None
        )
        if not plan.unsettled and (before is None or before.state != r.state or before.unsettled):
            log.info("rollout %s is %s, with nothing left to do", r.id, r.state)

    def _record_spent(self, r: Rollout, devices: Sequence[str], now: float) -> None:
        """Store (decision `revert_failed`) and log, once, the members whose
        every revert failed."""
        known = self._spent.get(r.id)
        if known is None:
            recorded = self.table.decisions(r.id, None, "revert_failed")
            known = self._spent[r.id] = {dev for d in recorded for dev in d["numbers"]["devices"]}
        new = [dev for dev in devices if dev not in known]
        if not new:
            return
        reasons = {}
        for dev in new:
            row = self.table.member(r.id, dev)
            last = self._update(row.revert_id if row is not None else None)
            reasons[dev] = (last.reason if last is not None else None) or "unknown"
        why = spent_reason(reasons)
        self.table.decide(r, now, "revert_failed", "failed", why, {"devices": reasons})
        known.update(new)
        log.warning("rollout %s: %s", r.id, why)

    def _held(self, r: Rollout, dev: str) -> bool:
        """dev's owner holds r's release back now: never, or a later not yet
        due (read again right before an offer)."""
        d = self.decisions.get(dev, r.release)
        return d is not None and d.holds(self.gw.clock.now())

    def _still_in(self, r: Rollout, dev: str) -> MemberRow | None:
        """dev's row read again right before the step acts on it, if dev is
        still in r: the step read the rows before it awaited the judge, and
        a device updated by hand meanwhile has left. (Nothing is awaited
        between this read and the updater's record of the offer.)"""
        row = self.table.member(r.id, dev)
        return row if row is not None and row.left is None else None

    async def _apply(self, r: Rollout, plan: Plan, now: float) -> None:
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
        if plan.revert_failed:
            self._record_spent(r, plan.revert_failed, now)
        for dev in plan.offer:
            row = self._still_in(r, dev)
            if row is None or row.update_id is not None or self._held(r, dev):
                continue
            try:
                u = await self.gw.ota.start(dev, r.release, idle=True)
            except GatewayError as exc:
                log.info("rollout %s: %s not offered now: %s", r.id, dev, exc)
                continue
            self.table.set_member(r.id, dev, update_id=u.id, offered=now)
        for dev in plan.revert:
            row = self._still_in(r, dev)
            target = r.reverts.get(str(row.from_counter)) if row is not None else None
            if target is None:
                continue
            try:
                u = await self.gw.ota.start(dev, target, idle=True)
            except GatewayError as exc:
                log.info("rollout %s: %s not reverted now: %s", r.id, dev, exc)
                continue
            self.table.set_member(r.id, dev, revert_id=u.id)

    # ---- the owner decides -----------------------------------------------------

    async def decided(self, dev: str, release: str, decision: str) -> None:
        """The owner of dev decided on release (gateway/decisions.py): `never`
        and `later` end an offer of it that dev has not installed yet (the
        member is offered the release anew when the decision lets it go), and
        a halted or completed rollout of it is stepped at the next tick. (Not
        under the steps' lock, which a judge's look holds for long: a step
        that planned an offer before the decision reads it again before it
        makes it, `_apply`.)"""
        found = self.table.rollout_of(dev, ("running", "paused", "completed"))
        u = self.gw.ota.active(dev)
        if decision in CANCELS and u is not None and u.release == release and u.state in NOT_INSTALLED:
            await self.gw.ota.cancel(dev, CANCELS[decision])
            if found is not None and found[1].update_id == u.id:
                self.table.set_member(found[0].id, dev, update_id=None, offered=None)
        final = self._final.get(found[0].id) if found is not None and found[0].release == release else None
        if final is not None:
            final.woken = True

    # ---- a device leaves -----------------------------------------------------

    def leave(self, dev: str, states: tuple[str, ...] = _LEFT_FROM) -> str | None:
        """A device taken by a new rollout leaves the rollout it is in (the
        id of that rollout, or None)."""
        with self.leaving(dev, states) as rid:
            return rid

    @contextlib.contextmanager
    def leaving(self, dev: str, states: tuple[str, ...] = _LEFT_FROM) -> Iterator[str | None]:
        """For an update by hand that the body starts: dev leaves the
        rollout it is in (one in states) first, so that no step of it offers
        dev the release or a revert while the update is offered, nor after,
        and is back in it if the body raises GatewayError (the update did
        not start). Yields the rollout's id, or None."""
        found = self.table.rollout_of(dev, states)
        if found is None:
            yield None
            return
        rid, at = found[0].id, self.gw.clock.now()
        self.table.set_member(rid, dev, left=at)
        try:
            yield rid
        except GatewayError:
            self.table.rejoin(rid, dev, at)
            raise

    # ---- a device forgotten ----------------------------------------------------

    @contextlib.asynccontextmanager
    async def still(self) -> AsyncIterator[None]:
        """No step of a rollout runs in the body (one that read its members
        before a device was forgotten would count it twice)."""
        async with self._lock:
            yield

    def gone(self, dev: str) -> list[Gone]:
        """What each rollout that has dev as a member shows of it now, and
        its update as the hard-failure rule counts it: what the rollout
        keeps of dev once its data is forgotten (RolloutTable.forget)."""
        now = self.gw.clock.now()
        out = []
        for row in self.table.memberships(dev):
            r = self.table.get(row.rollout)
            if r is None:
                continue
            [m] = self.members(r, [row])
            hard = hard_counts([None if m.left else self._update(row.update_id)])
            out.append(
                Gone(r.id, row.stage, m.shown(r.stage, now), 1, hard.offered, hard.failed, hard.rolled_back)
            )
        return out

    # ---- status ------------------------------------------------------------------

    def status(self, r: Rollout) -> dict[str, Any]:
        """What `rollout status` shows: the rollout, its members per stage and
        state, and its decisions (the judge's numbers among them)."""
        now = self.gw.clock.now()
        members = self.members(r)
        forgotten = self.table.forgotten(r.id)
        stages = []
        for k in range(len(r.stages)):
            counts = dict.fromkeys(MEMBER_STATES, 0)
            for m in members:
                if m.stage == k:
                    counts[m.shown(r.stage, now)] += 1
            for g in forgotten:
                if g.stage == k:
                    counts[g.state] += g.count
            stages.append({"stage": k + 1, "fraction": r.stages[k], "counts": counts})
        decisions = self.table.decisions(r.id)
        looks = [d for d in decisions if d["kind"] == "look"]
        return {
            "rollout": r.to_dict(),
            "now": now,
            "stages": stages,
            "judgement": looks[-1] if looks else None,
            "decisions": [d for d in decisions if d["kind"] != "look"][-20:],
            "looks": [_look(d) for d in self.table.decisions(r.id, limit=None, kind="look")],
        }


_LOOK_FIELDS = (
    "name",
    "result",
    "effect",
    "min_effect",
    "p_value",
    "alpha",
    "n_treatment",
    "n_control",
    "unit",
)


def _look(d: dict[str, Any]) -> dict[str, Any]:
    """A look, as the app charts it: when, at which stage, what it found of
    each metric (its effect and the threshold it is held to)."""
    numbers = d["numbers"]
    metrics = [{k: m.get(k) for k in _LOOK_FIELDS} for m in numbers.get("metrics", []) if isinstance(m, dict)]
    return {"at": d["at"], "stage": d["stage"] + 1, "result": d["result"], "metrics": metrics}


def _with_forgotten(hard: HardCounts, forgotten: Sequence[Gone]) -> HardCounts:
    """The hard counts of the members and of those forgotten since."""
    return HardCounts(
        offered=hard.offered + sum(g.offered for g in forgotten),
        failed=hard.failed + sum(g.failed for g in forgotten),
        rolled_back=hard.rolled_back + sum(g.rolled_back for g in forgotten),
    )


def _state(uid: str | None, u: Update | None) -> str | None:
    """The state of a member's update uid, found as u."""
    if uid is None:
        return None
    return "failed" if u is None else u.state  # (an update the store lost: not taken again)
