"""`permabeta gateway run` as a service is stopped: SIGTERM (what a service
manager sends) and SIGINT stop it cleanly, also when it was started with
SIGINT ignored (in the background of a non-interactive shell, or under
nohup), and it takes its API's address out of the database as it goes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.errors import GatewayError
from gateway.store import Store

from ..support.mosquitto import Mosquitto


def _api_published(db: Path | str) -> bool:
    if isinstance(db, Path) and not db.exists():
        return False
    try:
        with Store(db, readonly=True) as s:
            return s.get_meta("api") is not None
    except GatewayError:  # (created, not yet initialised)
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_gateway_cleanly_even_with_sigint_ignored_at_start(
    gw_db: Path | str, mosquitto: Mosquitto, sig: signal.Signals
) -> None:
    db = gw_db
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "gateway", "run", "--db", str(db), "--api", "127.0.0.1:0",
         "--broker", mosquitto.gateway_url.url(secret=True)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _api_published(db):
            assert proc.poll() is None and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.1)
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        assert not _api_published(db)  # its address went with it
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
