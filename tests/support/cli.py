"""The permabeta command line, run as a user runs it, against a gateway's database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def permabeta(db: Path | str, *words: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`permabeta WORDS... --db DB`, its output captured, stdin its standard input."""
    return run_cli(*words, "--db", str(db), stdin=stdin)


def run_cli(
    *words: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`permabeta WORDS...`, its output captured; env: variables to set (XDG_CONFIG_HOME, ...)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *words],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | (env or {}),
    )
