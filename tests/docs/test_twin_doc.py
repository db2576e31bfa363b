"""docs/twin.md stays true: its example answer has the shape of a real
preview's (every field, nested, and no other), its field table names every
field of the answer, its metrics table the code's metrics, and the limits it
states are the code's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.twin import preview, room, sandbox, service, skin
from gateway.twin.service import Row, TwinService

from .markdown import DOCS, code_names, parse_examples, table

TEXT = (DOCS / "twin.md").read_text(encoding="utf-8")
[EXAMPLE] = [e for e in parse_examples(TEXT, "twin.md") if e.tag == "preview"]


def shape(value: Any) -> Any:
    """The keys of every object, nested; lists by their first element."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value and isinstance(value[0], dict | list) else []
    return None


@pytest.mark.slow
def test_the_example_answer_has_the_shape_of_a_real_one(tmp_path: Path) -> None:
    from ota.keys import keygen

    from ..gateway.test_twin import G0, ReleaseStore, Store, features_release, record

    keys = keygen(tmp_path / "keys")
    store = Store(tmp_path / "gw.db")
    releases = ReleaseStore(store, root=keys.root_bytes)
    eco, _ = releases.add(features_release(tmp_path, keys, ["thermostat", "eco"], 5).path, G0)
    record(store, tmp_path)
    answer = preview.compute(preview.gather(store, releases, "th-1", eco, 2300.0))
    row = Row("th-1", eco.id, answer["state"], answer["reason"], answer, 2300.0, 1.0, 2.0, 3.0)
    real = TwinService.answer(None, row, eco)  # type: ignore[arg-type]
    assert shape(EXAMPLE.value()) == shape(real)


def test_the_field_table_names_every_field_of_the_answer() -> None:
    documented: set[str] = set()
    for row in table(TEXT.splitlines(), "| field | meaning |"):
        documented |= {n.split(".")[0] for n in code_names(row[0])}
    assert set(EXAMPLE.value()) | {"reasons", "code"} <= documented


def test_the_metrics_table_is_the_code_s() -> None:
    documented = {code_names(row[0])[0] for row in table(TEXT.splitlines(), "| metric | model |")}
    assert documented == {m for m, _, _ in preview.THERMOSTAT_METRICS + preview.SHIRT_METRICS}


def test_the_limits_it_states_are_the_code_s() -> None:
    limits = sandbox.Limits()
    assert f"{limits.memory // 2**20} MiB of address space" in TEXT
    assert f"{limits.cpu_s} s of CPU" in TEXT
    assert f"{limits.wall_s:g} s of wall-clock time" in TEXT
    assert f"less than {room.MIN_HOURS:g} hours of temperatures" in TEXT
    assert f"fewer than {room.MIN_SWITCHES} times" in TEXT
    assert f"more than {room.MAX_RMSE_C:g} C" in TEXT
    assert f"less than {skin.MIN_HOURS:g} hours of humidity" in TEXT
    assert f"above {skin.THRESHOLD:g} %RH" in TEXT
    assert f"setpoint - {room.BELOW_K} C or above it + {room.ABOVE_K} C" in TEXT
    assert f"younger than {service.MAX_AGE_S / 3600:g} hours" in TEXT
    assert re.search(rf"within {preview.CHECK_MAX:.0%}", TEXT)
