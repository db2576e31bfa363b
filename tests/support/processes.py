"""Devices and gateways as real processes: a provisioned device folder run by
the `micropython` unix binary (or by CPython), and `permabeta gateway run`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from firmware.pb.store import write_atomic
from gateway.broker import BrokerUrl

from .wait import wait_for

BIN = Path(sys.executable).parent
MICROPYTHON = BIN / "micropython"
PERMABETA = BIN / "permabeta"
# The heap of a device under test. The firmware's own figure is 128 KB (see
# the tests that hold it to that); elsewhere a little more, so that a test
# of some other behaviour does not fail on where a 64-bit heap fragments.
HEAP = "192K"
SMALL_HEAP = "128K"


class DeviceProcess:
    """A provisioned device folder, run as its own process."""

    def __init__(self, path: Path, interpreter: str = "micropython", heap: str = HEAP) -> None:
        self.path = path
        self.interpreter = interpreter
        self.heap = heap
        self.id = json.loads((path / "config.json").read_text())["device"]
        self.log = path / "device.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def password(self) -> str:
        return str(json.loads((self.path / "config.json").read_text())["broker"]["password"])

    def command(self) -> list[str]:
        if self.interpreter == "micropython":
            return [str(MICROPYTHON), "-X", f"heapsize={self.heap}", "main.py"]
        return [sys.executable, "main.py"]

    def start(self) -> DeviceProcess:
        with self.log.open("ab") as log:
            # its own process group: on the unix port the device is a
            # supervisor and a child (see firmware/main.py); a power cut takes both
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.path,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole device (sig=SIGKILL: a power cut)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(10)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def set_sensors(self, **values: float) -> None:
        path = self.path / "hal" / "sensors.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(values)
        write_atomic(str(path), json.dumps(current).encode())

    def actuators(self) -> dict[str, Any]:
        path = self.path / "hal" / "actuators.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class GatewayProcess:
    """`permabeta gateway run` as a subprocess, and the CLI against its db."""

    def __init__(self, broker: BrokerUrl, db: Path | str, log: Path, extra: Sequence[str] = ()) -> None:
        self.broker = broker
        self.db = db
        self.log = log
        self.extra = list(extra)  # more options, e.g. --keys DIR
        self.client_id = f"gw-{os.getpid()}-{id(self):x}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(PERMABETA),
                    "gateway",
                    "run",
                    "--broker",
                    self.broker.url(secret=True),
                    "--db",
                    str(self.db),
                    "--api",
                    "127.0.0.1:0",
                    "--client-id",
                    self.client_id,
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(self._api_up, 20, what="the gateway's API")
        return self

    def _api_up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"gateway exited: {self.log.read_text()[-3000:]}")
        return "API http" in self.log.read_text()

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cli(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run `permabeta ARGS --db DB`."""
        env = dict(os.environ)
        proc = subprocess.run(
            [str(PERMABETA), *args, "--db", str(self.db)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"permabeta {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def popen_cli(self, *args: str) -> subprocess.Popen[str]:
        """`permabeta ARGS --db DB`, running: for commands that wait."""
        return subprocess.Popen(
            [str(PERMABETA), *args, "--db", str(self.db)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def devices(self) -> list[dict[str, Any]]:
        return list(json.loads(self.cli("devices", "list", "--json").stdout))

    def device(self, dev: str) -> dict[str, Any]:
        return dict(json.loads(self.cli("devices", "show", dev, "--json").stdout))
