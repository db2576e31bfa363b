"""`make test` on a fresh machine: `make system-deps` installs the system
packages the suite needs when it can (root, or sudo without a password) and,
when it cannot, says the exact command to run and fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def make_system_deps(deps: str, as_user: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["make", "-s", "-C", str(ROOT), "system-deps", f"SYSTEM_DEPS={deps}"]
    if as_user is not None:
        cmd = ["runuser", "-u", as_user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _unprivileged() -> str | None:
    """A user who cannot install packages, to run as (None: this one), or skip."""
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("root without runuser: no way to run as a user who cannot install")
        return "nobody"
    sudo = shutil.which("sudo")
    if sudo is not None and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0:
        pytest.skip("this user can install packages (sudo without a password)")
    return None


def test_what_is_there_already_needs_nothing_and_says_nothing() -> None:
    done = make_system_deps("mosquitto:mosquitto mosquitto-clients:mosquitto_pub socat:socat python3-venv:")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_a_user_who_cannot_install_is_told_the_exact_command() -> None:
    user = _unprivileged()
    if user is not None and not os.access(ROOT / "Makefile", os.R_OK):
        pytest.skip("the worktree is not readable by an unprivileged user")
    done = make_system_deps("pb-missing-pkg:pb-missing-command socat:socat", as_user=user)
    assert done.returncode != 0
    assert (
        "  sudo apt-get update && sudo apt-get install -y --no-install-recommends pb-missing-pkg\n"
        in done.stderr
    ), done.stderr
    assert "cannot install" in done.stderr and "socat" not in done.stderr.split("lacks:")[1].split("\n")[0]
