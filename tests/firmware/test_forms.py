"""Which files of a release a device takes (firmware/pb/ota/forms.py): of each
module the form its interpreter runs, every other file as it is; a release
that lacks the device's form of a module is refused with the reason. Run
under CPython (source form) and on the MicroPython unix port (compiled)."""

from __future__ import annotations

from typing import Any

import pytest

from firmware.pb.errors import TrustError
from firmware.pb.ota import forms

from ..support import micropython


def entry(path: str) -> dict[str, Any]:
    return {"path": path, "size": 1, "sha256": "0" * 64, "zsize": 1, "zsha256": "0" * 64}


BOTH = [
    entry(p)
    for p in (
        "eco/__init__.mpy",
        "eco/__init__.py",
        "eco/manifest.json",
        "eco/tables/t00.bin",
        "eco/util.mpy",
        "eco/util.py",
    )
]


def paths(files: list[dict[str, Any]]) -> list[str]:
    return [f["path"] for f in files]


def test_each_interpreter_takes_its_form_of_every_module_and_every_other_file() -> None:
    shared = ["eco/manifest.json", "eco/tables/t00.bin"]
    assert paths(forms.device_files(BOTH, "py")) == ["eco/__init__.py", *shared, "eco/util.py"]
    assert paths(forms.device_files(BOTH, "mpy")) == ["eco/__init__.mpy", *shared, "eco/util.mpy"]


@pytest.mark.parametrize("form", ["py", "mpy"])
def test_a_release_of_one_form_serves_devices_of_that_form(form: str) -> None:
    only = [f for f in BOTH if not f["path"].endswith(".mpy" if form == "py" else ".py")]
    assert forms.device_files(only, form) == only


@pytest.mark.parametrize(
    ("form", "lacking", "runs"), [("py", ".mpy", "CPython"), ("mpy", ".py", "MicroPython")]
)
def test_a_release_without_the_device_form_of_a_module_is_refused(form: str, lacking: str, runs: str) -> None:
    other = [f for f in BOTH if not f["path"].endswith("." + form)]
    with pytest.raises(TrustError) as info:
        forms.device_files(other, form)
    assert info.value.code == "wrong_form"
    assert info.value.message == f"eco/__init__{lacking} has no .{form} form, which this device ({runs}) runs"
    # one module lacking it is enough
    mixed = [f for f in BOTH if f["path"] != f"eco/util.{form}"]
    with pytest.raises(TrustError, match=f"eco/util{lacking} has no .{form} form"):
        forms.device_files(mixed, form)


def test_the_interpreter_decides_the_form() -> None:
    assert forms.FORM == "py"  # this test process is CPython
    code = """
import json
from pb.ota import forms
from pb.errors import TrustError
files = json.load(open(__import__("sys").argv[1]))
print(json.dumps([forms.FORM, [f["path"] for f in forms.device_files(files)]]))
try:
    forms.device_files([f for f in files if not f["path"].endswith(".mpy")])
except TrustError as exc:
    print(json.dumps([exc.code, exc.message]))
"""
    out = micropython.run_json_lines(code, [BOTH])
    assert out == [
        ["mpy", ["eco/__init__.mpy", "eco/manifest.json", "eco/tables/t00.bin", "eco/util.mpy"]],
        ["wrong_form", "eco/__init__.py has no .mpy form, which this device (MicroPython) runs"],
    ]


def test_the_download_leaves_out_a_module_lacking_the_form_and_refuses_only_a_release_without_it() -> None:
    # a first, unverified look (the agent's): the install judges the rest after the signatures
    mixed = [f for f in BOTH if f["path"] != "eco/util.mpy"]
    assert paths(forms.device_files(mixed, "mpy", whole=False)) == [
        "eco/__init__.mpy",
        "eco/manifest.json",
        "eco/tables/t00.bin",
    ]
    source = [f for f in BOTH if not f["path"].endswith(".mpy")]
    with pytest.raises(TrustError, match=r"^eco/__init__\.py has no \.mpy form"):
        forms.device_files(source, "mpy", whole=False)
