"""docs/rollouts.md stays true: the member states of section 1 and their
marks in section 4 are the code's; in section 5 its tables of declaration
keys, aggregations and reset causes are the code's, and its example
declaration is the shipped one."""

from __future__ import annotations

import json
import re

import pytest

from gateway.metrics import Aggregation, HelloRecord, MetricDecl, Transition, declared, resets_per_hour

from .markdown import DOCS, ROOT, code_names, parse_examples, section, table

TEXT = (DOCS / "rollouts.md").read_text(encoding="utf-8")
METRICS = section(TEXT, "5. Product metrics", "rollouts.md")
FEATURES = ROOT / "firmware" / "features"
T0 = 1_800_000_000.0


def test_the_declaration_keys_are_the_code_s() -> None:
    documented = {code_names(row[0])[0] for row in table(METRICS, "| key |")}
    decl = MetricDecl.from_dict("vent", "m", {"better": "lower", "of": {"mean": "sensors.humidity"}})
    assert documented == set(decl.to_dict())


def test_the_aggregations_are_the_code_s() -> None:
    documented = {code_names(row[0])[0] for row in table(METRICS, "| aggregation |")}
    assert documented == {a.value for a in Aggregation}


def test_the_example_is_the_vent_s_declaration() -> None:
    [example] = [e for e in parse_examples("\n".join(METRICS), "rollouts.md") if e.tag == "metrics"]
    assert example.params == ("vent",)
    manifest = json.loads((FEATURES / "vent" / "manifest.json").read_text())
    assert example.value() == manifest["metrics"]
    assert len(declared({"vent": manifest})) == len(example.value())


def _counts(cause: str, reason: str | None) -> bool:
    hellos = [HelloRecord(T0, 1, "power_on"), HelloRecord(T0 + 60, 2, cause)]
    transitions = [Transition(T0 + 30, False, reason), Transition(T0 + 50, True)]
    return resets_per_hour(hellos, transitions, T0, T0 + 3600) == 1.0


@pytest.mark.parametrize("row", table(METRICS, "| `reset_cause` |"), ids=lambda row: row[0])
def test_the_reset_causes_count_as_documented(row: list[str]) -> None:
    causes = code_names(row[0]) + (["brownout"] if "any other" in row[0] else [])
    counts = row[1].startswith("yes")
    for cause in causes:
        assert _counts(cause, "lost") is counts, cause
    if "unless announced" in row[1]:
        announced = [r for r in code_names(row[1]) if r != "memory"]
        assert announced == ["update", "rollback", "reboot", "stop"]
        for reason in announced:
            assert not _counts(causes[0], reason), reason
        assert _counts(causes[0], "memory")


def test_the_member_states_and_their_marks_in_rollout_status_are_the_code_s() -> None:
    from gateway.cli_rollout import MARKS
    from gateway.rollout_plan import MEMBER_STATES

    start = " ".join(section(TEXT, "1. A rollout", "rollouts.md"))
    assert code_names(start[start.index("Each member shows one") :]) == list(MEMBER_STATES)
    creating = " ".join(section(TEXT, "4. Creating a rollout", "rollouts.md"))
    marks = creating[creating.index("(one mark per state:") : creating.index("blank pending")]
    documented = dict(re.findall(r"`(.)` ([a-z ]+?)(?:,|$)", marks))  # mark -> words
    assert len(documented) == len(MARKS) - 1 and set(documented) | {" "} == set(MARKS.values())
    assert documented[MARKS["revert_failed"]] == "revert failed"
