"""The pure parts of `permabeta devices update`: the progress line, the rate,
the final line. (The command itself runs in tests/system/test_ota_gateway.py.)"""

from __future__ import annotations

import io
from typing import Any

from gateway.cli import build_parser
from gateway.cli_ota import Rate, final_line, progress_line, watch


def record(**over: Any) -> dict[str, Any]:
    u = {
        "id": "a1b2c3d4e5f6",
        "device": "th-1",
        "model": "thermostat",
        "counter": 2,
        "version": "2026.11.1",
        "state": "downloading",
        "bytes": 512,
        "total": 2048,
        "served": 1500,
        "requests": 4,
        "reason": None,
        "started": 100.0,
        "finished": None,
    }
    return u | over


def test_the_progress_line_shows_bar_bytes_rate_and_state() -> None:
    line = progress_line(record(), 2048.0)
    assert line == "[######------------------] 0.5/2.0 KB  2.0 KB/s  downloading"


def test_before_the_device_says_how_much_it_needs_the_line_shows_what_was_sent() -> None:
    line = progress_line(record(state="offered", total=None, bytes=0), None)
    assert line == "[------------------------] sent 1.5 KB  -- KB/s  offered"


def test_the_rate_is_over_the_last_seconds() -> None:
    rate = Rate(window_s=2.0)
    assert rate.add(0.0, 0) is None
    assert rate.add(1.0, 1000) == 1000.0
    rate.add(2.0, 3000)
    assert rate.add(4.0, 3000) == 0.0  # the early samples have left the window


def test_the_final_line_says_committed_or_why_not() -> None:
    ok = final_line(record(state="committed", finished=104.5))
    assert ok.startswith("update a1b2c3d4e5f6 committed: thermostat@2 (2026.11.1) on th-1 in 4.5 s")
    bad = final_line(record(state="failed", reason="timeout", finished=1000.0))
    assert bad.startswith("update a1b2c3d4e5f6 failed: timeout; thermostat@2 (2026.11.1) on th-1")


class Replies:
    """The gateway's answers to GET /api/v1/updates/{uid}, one per poll."""

    def __init__(self, *records: dict[str, Any]) -> None:
        self.records = list(records)

    def request(self, method: str, path: str, timeout: float) -> dict[str, Any]:
        assert (method, path) == ("GET", "/api/v1/updates/a1b2c3d4e5f6")
        return self.records.pop(0)


def test_not_on_a_terminal_every_change_of_state_gets_a_line_even_between_polls() -> None:
    def step(state: str, total: int | None = 2048) -> dict[str, Any]:
        return {"at": 1.0, "state": state, "reason": None, "bytes": 0, "total": total}

    first = [step("offered", None)]
    later = first + [step(s) for s in ("downloading", "staged", "verified", "activating", "trial")]
    client = Replies(
        record(state="offered", steps=first, total=None, ended=False),
        record(state="trial", steps=later, ended=False),
        record(state="committed", steps=[*later, step("committed")], ended=True),
    )
    out = io.StringIO()
    u = watch(client, "a1b2c3d4e5f6", 10, out, live=False, poll_s=0)
    assert u["state"] == "committed" and client.records == []
    states = [line.rsplit(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert states == ["offered", "downloading", "staged", "verified", "activating", "trial", "committed"]


def test_the_commands_parse() -> None:
    p = build_parser()
    a = p.parse_args(["devices", "update", "th-1", "thermostat@2", "--no-wait", "--timeout", "30"])
    assert (a.id, a.release, a.no_wait, a.timeout, a.force) == ("th-1", "thermostat@2", True, 30.0, False)
    a = p.parse_args(["ota", "publish", "R", "--db", "x.db"])
    assert (a.release, a.db) == ("R", "x.db")
    a = p.parse_args(["gateway", "run", "--keys", "K", "--update-deadline", "60"])
    assert (a.keys, a.update_deadline) == ("K", 60.0)
    assert p.parse_args(["gateway", "run"]).update_deadline == 900.0
