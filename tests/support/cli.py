"""The permabeta command line, run as a user runs it, against a gateway's database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def permabeta(db: Path, *words: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`permabeta WORDS... --db DB`, its output captured, stdin its standard input."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *words, "--db", str(db)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
