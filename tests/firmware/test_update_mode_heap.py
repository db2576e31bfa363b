"""Update mode's heap on the MicroPython unix port at 128 KB, as a board
boots into it: the boot loader, the boot's preparation, then update mode's
modules. MicroPython interns every name and short string of the modules it
loads in pools that never shrink, and each new pool is twice the last: on
this port the sixth takes about 7.7 KB at once, which a heap shared by the
link and the download cannot spare (a shirt's update then runs out of RAM
inflating its first file). These tests keep the names update mode interns
below that step, with room to grow, and show the free heap after it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from gateway.broker import BrokerUrl
from gateway.provision import provision_into

from ..support.micropython import MICROPYTHON

pytestmark = pytest.mark.skipif(not MICROPYTHON.exists(), reason="no micropython unix port")

# the pools on this port hold 20, 40, 80, 160 and 320 names: 620 in five
POOLS_5 = 620
# the boot into update mode interns about 8 names more than this measure
# (its state, the offer's keys); what is left is for the next change
MARGIN = 16

BOOT_INTO_UPDATE_MODE = """
import sys, gc, micropython
sys.path.insert(0, ".")
from loader import boot
chosen = boot(".")
sys.modules.pop("loader", None)
gc.collect()
import pb.start
pb.start._prepare(".", chosen)
import pb.ota.update_mode
import LINK  # (and its link, loaded as it starts: the broker's, or a serial line's)
gc.collect()
micropython.qstr_info()
print("free", gc.mem_free())
"""


def _boot(tmp_path: Path, model: str, line: bool = False) -> tuple[int, int, int]:
    folder = tmp_path / model
    provision_into(
        folder,
        model,
        f"{model[:2]}-heap",
        BrokerUrl("127.0.0.1", 1883),
        password="x",
        compile_mpy=True,
        serial_line=("/dev/ttyUSB0", 115200) if line else None,
    )
    script = tmp_path / "boot.py"
    link = "pb.net.line, pb.net.serial_link, pb.net.proof" if line else "pb.net.mqtt_client"
    script.write_text(BOOT_INTO_UPDATE_MODE.replace("LINK", link))
    out = subprocess.run(
        [str(MICROPYTHON), "-X", "heapsize=128K", str(script)],
        cwd=folder,
        env={"MICROPYPATH": ".frozen:."},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    pools = re.search(r"n_pool=(\d+), n_qstr=(\d+)", out)
    free = re.search(r"free (\d+)", out)
    assert pools and free, out
    return int(pools[1]), int(pools[2]), int(free[1])


@pytest.mark.parametrize(("model", "line"), [("thermostat", False), ("shirt", False), ("thermostat", True)])
def test_update_mode_interns_its_names_below_the_next_pool(tmp_path: Path, model: str, line: bool) -> None:
    pools, names, free = _boot(tmp_path, model, line)
    on = "a serial line" if line else "MQTT"
    print(
        f"\n{model} on {on}: update mode interns {names} names in {pools} pools; "
        f"{free} bytes free after its imports"
    )
    assert pools <= 5 and names <= POOLS_5 - MARGIN, (
        f"update mode interns {names} names: within {MARGIN} of the {POOLS_5} five pools hold, a sixth "
        "takes about 7.7 KB of a 128 KB heap at once. Give update mode's modules fewer names: "
        "private const()s, no new module-level names, long messages instead of short strings."
    )
