"""docs/simulator.md stays true: every option of `permabeta sim run` is in
its tables and every option in them exists; every fault method of the
Python API is in the fault table."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

from gateway.cli import build_parser
from simulator.fleet import FleetFaults

DOC = (Path(__file__).resolve().parents[2] / "docs" / "simulator.md").read_text()


def _sim_run_options() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sim = sub.choices["sim"]
    simsub = next(a for a in sim._actions if isinstance(a, argparse._SubParsersAction))
    run = simsub.choices["run"]
    return {o for a in run._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def test_every_sim_run_option_is_documented_and_none_more() -> None:
    section = DOC.split("## 1.")[1].split("## 2.")[0]
    documented = set(re.findall(r"`(--[a-z-]+)", section))
    options = _sim_run_options()
    assert options - documented == set(), "options not in docs/simulator.md section 1"
    assert documented - options == set(), "docs/simulator.md section 1 names options that do not exist"


def test_every_fault_of_the_python_api_is_in_the_fault_table() -> None:
    table = DOC.split("## 3.")[1].split("## 4.")[0]
    public = {
        name
        for name, _ in inspect.getmembers(FleetFaults, inspect.isfunction)
        if not name.startswith("_") and name not in ("pick", "cancel")
    }
    missing = {name for name in public if f"faults.{name}(" not in table}
    assert not missing, f"fault methods not in docs/simulator.md section 3: {missing}"
