"""A root sent to a board is checked at its next boot (docs/ota.md 1.1), on
the real MicroPython unix port. At that point prepare() holds a block
whole for an install's signature check; a heap with no room beside it for
the root's check (Ed25519 in pure Python) must not crash the boot, which
would crash again at every boot after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.broker import BrokerUrl
from gateway.provision import provision_into
from ota.keys import keygen, rotate_root

from ..support.processes import DeviceProcess
from ..support.wait import wait_for

pytestmark = pytest.mark.slow

# a heap on which the check finds no block beside the install's room, and does
# once that room is given up (the device then runs out of RAM further on, which
# is not this test's business: 128 KB is the firmware's figure)
TIGHT_HEAP = "100K"


def test_a_root_sent_is_taken_at_boot_on_a_heap_with_no_room_beside_the_install_s(tmp_path: Path) -> None:
    keys = keygen(tmp_path / "keys")
    folder = tmp_path / "th-1"
    provision_into(
        folder, "thermostat", "th-1", BrokerUrl("127.0.0.1", 1), password="pw", compile_mpy=True,
        root=keys.root_bytes,
    )  # fmt: skip
    first = DeviceProcess(folder, "micropython", TIGHT_HEAP).start()
    try:
        wait_for(lambda: (folder / "ota" / "root.1.json").exists(), 20, what="the provisioned root taken")
    finally:
        first.kill()
    rotated = rotate_root(tmp_path / "keys")
    (folder / "ota" / "root.next.json").write_bytes(rotated.root_bytes)  # as the runtime keeps one sent
    dev = DeviceProcess(folder, "micropython", TIGHT_HEAP).start()
    try:
        # (root 2 is written, then the one sent let go: a moment apart on a loaded machine)
        taken = folder / "ota" / "root.2.json"
        sent = folder / "ota" / "root.next.json"
        wait_for(lambda: taken.exists() and not sent.exists(), 20, what="root 2 taken at boot")
        assert (folder / "ota" / "root.2.json").read_bytes() == rotated.root_bytes
        assert "in settle" not in dev.output()  # (no MemoryError out of the check)
    finally:
        dev.kill()
