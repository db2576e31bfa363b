"""What a rollout does next (docs/rollouts.md 1, 7, 8): pure decisions, no
store, no clock (`now` is passed in), no messages. The runner
(gateway/rollout_service.py) gives it the rollout and what it knows of each
member, and carries out the plan it returns.

A member is a device of the rollout's cohort, assigned to a stage at random
when the rollout is created (`assign`). At each step:
- a running rollout offers its release to every member of the stages
  reached that is online and that its owner's policy and decision let go
  now (auto; ask once the owner said yes; window within the daily window;
  the owner's `now` at once, `later` not before its time, `never` not at
  all: the member is `declined`, neither failed nor treated);
- a halted rollout with revert releases offers the revert to every member
  that took the release (committed, or on trial), as they come online; a
  revert that failed is offered again, REVERT_RETRY_S after it ended, up to
  REVERT_TRIES in all, and the member is then shown `revert_failed`;
- a halted or completed rollout says which members it may still act on
  (`unsettled`): once there are none, the runner stops stepping it;
- the judge's verdict (gateway/judge.py, computed by the runner) halts a
  running rollout, and a stage whose soak has passed with every rule
  passing makes way for the next one, or ends the rollout after the last.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import RolloutError
from .settings import Window
from .updates import ENDED

DEFAULT_STAGES = (0.01, 0.10, 0.50, 1.0)
DEFAULT_SOAK_S = 600.0
DEFAULT_MAX_FAILURE_RATE = 0.05
MAX_STAGES = 20
REVERT_TRIES = 3  # revert updates a member is offered in all, the first included
REVERT_RETRY_S = 60.0  # from a failed revert's end to the next one's offer
STATES = ("running", "paused", "halted", "aborted", "completed")
# what a member shows in `rollout status`, in the order of its bars
MEMBER_STATES = (
    "pending",
    "awaiting_owner",
    "waiting_window",
    "postponed",
    "offline",
    "ready",
    "offered",
    "downloading",
    "deferred",
    "installing",
    "trial",
    "committed",
    "rolled_back",
    "failed",
    "cancelled",
    "reverting",
    "reverted",
    "revert_failed",
    "declined",
    "left",
)
UPDATE_SHOWN = {
    "offered": "offered",
    "downloading": "downloading",
    "deferred": "deferred",
    "staged": "installing",
    "verified": "installing",
    "activating": "installing",
    "trial": "trial",
    "committed": "committed",
    "rolled_back": "rolled_back",
    "failed": "failed",
}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_FAILED = ("failed", "rolled_back")  # an update that ended without its release installed


def parse_percent(text: str, what: str) -> float:
    """`5%` (or `0.05`) as a fraction within 0 and 1. Raises RolloutError."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise RolloutError(f"{what} must be a percentage such as 5%, not {text!r}") from None
    if not 0 <= value <= 1 or math.isnan(value):
        raise RolloutError(f"{what} must be within 0% and 100%, not {text!r}")
    return value


def parse_stages(text: str) -> tuple[float, ...]:
    """`1%,10%,50%,100%`: rising fractions of the cohort, the last 100%. Raises RolloutError."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts or len(parts) > MAX_STAGES:
        raise RolloutError(f"stages are 1 to {MAX_STAGES} percentages such as 1%,10%,100%, not {text!r}")
    stages = tuple(parse_percent(p, "a stage") for p in parts)
    if any(s <= 0 for s in stages) or any(b <= a for a, b in itertools.pairwise(stages)):
        raise RolloutError(f"stages must rise above 0%, each above the one before: {text!r}")
    if stages[-1] != 1.0:
        raise RolloutError(f"the last stage must be 100% (the whole cohort), not {parts[-1].strip()}")
    return stages


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `6h`, `1d` (or seconds) as seconds. Raises RolloutError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise RolloutError(f"a duration is a number with s, m, h or d (10m), not {text!r}")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds > 30 * 86400:
        raise RolloutError(f"a soak of more than 30 days is not a soak: {text!r}")
    return seconds


def stage_sizes(n: int, stages: Sequence[float]) -> list[int]:
    """How many of n members the stages reach, cumulatively: at least one
    each while members remain, all of them at the last."""
    sizes: list[int] = []
    for f in stages:
        k = min(n, max(math.ceil(f * n - 1e-9), (sizes[-1] + 1) if sizes else 1))
        sizes.append(k)
    if sizes:
        sizes[-1] = n
    return sizes


def assign(devices: Iterable[str], stages: Sequence[float], seed: int) -> dict[str, int]:
    """Each device's stage (0 first), at random but the same for the same
    seed and devices: a stage is a fair sample of the cohort."""
    order = sorted(set(devices))
    random.Random(seed).shuffle(order)
    sizes = stage_sizes(len(order), stages)
    out: dict[str, int] = {}
    stage = 0
    for i, dev in enumerate(order):
        while i >= sizes[stage]:
            stage += 1
        out[dev] = stage
    return out


@dataclass(frozen=True)
class Member:
    """What the plan knows of one member now."""

    device: str
    stage: int
    online: bool = False
    policy: str = "auto"
    window: Window | None = None
    utc_offset_min: int = 0
    decision: str | None = None  # the owner's on the rollout's release: now, later, never (decisions.py)
    until: float | None = None  # (later) not before this time
    update: str | None = None  # the state of its update to the release, if offered
    cancelled: bool = False  # that update failed as the rollout itself ended it (halted, aborted)
    revert: str | None = None  # the state of its revert update, if offered
    left: bool = False  # updated by hand: no longer the rollout's
    runs: bool = False  # its hello says it runs the release, committed (whatever its update says)
    reverts: int = 0  # revert updates it was offered, counted from the store
    revert_ended: float | None = None  # when its last revert update ended, if it has

    def shown(self, stage: int, now: float) -> str:
        """Its state in `rollout status` while the rollout is at stage."""
        if self.left:
            return "left"
        if self.revert is not None:
            if self.revert == "committed":
                return "reverted"
            return "revert_failed" if self.revert_spent() else "reverting"
        if self.declined() and self.update in (None, "failed"):
            return "declined"
        if self.update is not None:
            # (an offer the rollout cancelled is no failure of the release's: the judge counts none)
            return "cancelled" if self.cancelled else UPDATE_SHOWN.get(self.update, self.update)
        if self.stage > stage:
            return "pending"
        if not self.online:
            return "offline"
        return self.waiting(now) or "ready"

    def took(self) -> bool:
        """It took the release: its update committed, or its hello says it
        runs it (an update the halt cancelled that had been staged already)."""
        return self.update == "committed" or self.runs

    def declined(self) -> bool:
        """Its owner said never to the release, and it did not take it."""
        return self.decision == "never" and not self.took()

    def revert_spent(self) -> bool:
        """Its last revert failed and it has had its REVERT_TRIES."""
        return self.revert in _FAILED and self.reverts >= REVERT_TRIES

    def revert_due(self, now: float) -> bool:
        """It may be offered the revert now (online, and it took the
        release): never offered one, or the last failed REVERT_RETRY_S ago
        or more and it has tries left."""
        if not self.online or self.left or not self.took():
            return False
        if self.revert is None:
            return True
        ended = self.revert_ended if self.revert_ended is not None else -math.inf
        return self.revert in _FAILED and not self.revert_spent() and now - ended >= REVERT_RETRY_S

    def waiting(self, now: float) -> str | None:
        """What its owner's decision or policy waits for now: declined (for
        ever), postponed (a `later` not yet due), awaiting_owner,
        waiting_window or None (it may go). `now` goes at once, outside the
        window too; a `later` that is due is the owner's yes to an `ask`, and
        a `window` device still waits for its window."""
        if self.decision == "never":
            return "declined"
        if self.decision == "later" and (self.until is None or now < self.until):
            return "postponed"
        if self.decision == "now":
            return None
        if self.policy == "ask" and self.decision is None:
            return "awaiting_owner"
        w = self.window
        if self.policy == "window" and w is not None and not w.contains(now, self.utc_offset_min):
            return "waiting_window"
        return None


@dataclass(frozen=True)
class Verdict:
    """What the judge said of the current stage (gateway/judge.py, reduced
    to what the plan acts on)."""

    halt: bool
    passing: bool  # every rule passes (none fails, none still waits for data)
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    offer: tuple[str, ...] = ()  # members to offer the release to now
    revert: tuple[str, ...] = ()  # members to offer the revert release to now
    state: str | None = None  # the rollout's new state, if it changes
    stage: int | None = None  # the stage it moves to, if it does
    reason: str = ""  # why the state or the stage changed
    counts: dict[str, int] = field(default_factory=dict)  # members per shown state
    # (halted or completed) the members it may still act on: none, and it
    # has nothing left to do
    unsettled: tuple[str, ...] = ()
    revert_failed: tuple[str, ...] = ()  # members whose every revert failed


def step(
    state: str,
    stage: int,
    stage_started: float,
    n_stages: int,
    soak_s: float,
    members: Sequence[Member],
    verdict: Verdict | None,
    now: float,
    can_revert: bool,
) -> Plan:
    """The next actions of a rollout in state at stage (0 first) since
    stage_started. verdict: the judge's on this stage, or None when it was
    not asked. can_revert: the rollout has a revert release for its members."""
    counts = dict.fromkeys(MEMBER_STATES, 0)
    for m in members:
        counts[m.shown(stage, now)] += 1
    if state == "halted":
        # every member that took the release (Member.took); one on trial is
        # waited for (it refuses an offer); a failed revert is tried again
        if not can_revert:
            return Plan(counts=counts)
        back = tuple(m.device for m in members if m.revert_due(now))
        unsettled = tuple(
            m.device
            for m in members
            if not m.left
            and (
                (m.update is not None and m.update not in ENDED)  # (it may yet commit)
                or (m.took() and m.revert != "committed" and not m.revert_spent())
            )
        )
        spent = tuple(m.device for m in members if not m.left and m.revert_spent())
        return Plan(revert=back, counts=counts, unsettled=unsettled, revert_failed=spent)
    if state not in ("running", "completed"):
        return Plan(counts=counts)
    if state == "running" and verdict is not None and verdict.halt:
        return Plan(state="halted", reason=verdict.reason, counts=counts)
    # (a completed rollout still offers its release to members that come back)
    offer = tuple(
        m.device
        for m in members
        if m.stage <= stage and m.update is None and not m.left and m.online and m.waiting(now) is None
    )
    if state == "completed":
        unsettled = tuple(
            m.device for m in members if not m.left and not m.declined() and m.update not in ENDED
        )
        return Plan(offer=offer, counts=counts, unsettled=unsettled)
    soaked = now - stage_started >= soak_s
    if state == "running" and soaked and verdict is not None and verdict.passing:
        if stage + 1 < n_stages:
            return Plan(offer=offer, stage=stage + 1, reason=f"stage {stage + 1} passed", counts=counts)
        return Plan(offer=offer, state="completed", reason="the last stage passed", counts=counts)
    return Plan(offer=offer, counts=counts)
