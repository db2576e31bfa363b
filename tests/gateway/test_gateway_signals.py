"""`permabeta gateway run` as a service is stopped: SIGTERM (what a service
manager sends) and SIGINT stop it cleanly, also when it was started with
SIGINT ignored (in the background of a non-interactive shell, or under
nohup), and it takes its API's address out of the database as it goes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.errors import GatewayError
from gateway.service import cancel_until_done
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


async def _loses_two_cancels() -> None:
    """Sleeps, losing the first two cancels as a wait_for of Python 3.11 may."""
    lost = 0
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if lost == 2:
                raise
            lost += 1
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # (as wait_for leaves it)


async def test_a_stop_cancels_again_a_task_that_lost_a_cancel() -> None:
    """A cancel that comes as an asyncio.wait_for's wait ends is lost on
    Python 3.11 (aiomqtt's publish, nats-py, database drivers wait so): the
    gateway's task went on, and a signal did not stop it. A stop cancels
    again while the task runs."""

    task = asyncio.create_task(_loses_two_cancels())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_until_done(task, again_s=0.05), 5)
    assert task.cancelled()


async def test_a_stop_reaches_a_task_group_s_task_that_lost_a_cancel() -> None:
    """The gateway runs its parts in a TaskGroup, which, once stopping,
    passes no second cancel on: `gateway run`'s stop cancels every task
    again (but its own caller's)."""

    async def gateway() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_loses_two_cancels())
            tg.create_task(asyncio.sleep(3600))

    me = asyncio.current_task()
    for every_task, ends in ((False, False), (True, True)):
        task = asyncio.create_task(gateway())
        await asyncio.sleep(0)
        stop = asyncio.create_task(cancel_until_done(task, 0.05, every_task=every_task, spare=(me,)))
        await asyncio.wait([stop], timeout=1.0)
        assert stop.done() is ends and task.done() is ends
        if not ends:
            stop.cancel()
            await cancel_until_done(task, 0.05, every_task=True, spare=(stop, me))
        assert task.cancelled()
