"""What a device's hello says of the set it runs (pb/ota/updates.py Updates.info,
docs/protocol.md 3.1): a board rolled back to its factory set says factory, as one
that never took an update does (the boot loader's pointer then names the factory
folder, committed, counter 0)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from firmware.pb.ota.updates import Boot, Updates


@pytest.mark.parametrize(
    ("pointer", "trial", "state"),
    [
        (None, False, "factory"),
        ({"set": "features", "counter": 0, "manifest": None, "state": "committed"}, False, "factory"),
        ({"set": "ota/a", "counter": 3, "manifest": "ab" * 32, "state": "committed"}, False, "committed"),
        ({"set": "ota/b", "counter": 4, "manifest": "cd" * 32, "state": "trial"}, True, "trial"),
    ],
)
def test_the_hello_says_which_set_runs(pointer: dict[str, Any] | None, trial: bool, state: str) -> None:
    root = "features" if pointer is None else pointer["set"]
    u = Updates(SimpleNamespace(config={}), Boot(root, pointer, trial))
    info = u.info()
    assert info["state"] == state
    assert info["counter"] == (pointer or {}).get("counter", 0)
