"""Bluetooth without a radio: a private D-Bus system bus (dbus-daemon with a
configuration of our own that allows everything) and bluezoo, a BlueZ
stand-in that serves org.bluez on that bus, with two adapters hci0 and
hci1 that see each other.

The gateway (bleak, BlueZ backend) uses hci0; a simulated device's BLE side
(simulator/ble_peripheral.py) registers its GATT application and its
advertisement on hci1. Both find the bus through DBUS_SYSTEM_BUS_ADDRESS.

bluezoo (GPL-2.0-only) is only ever run as a process of its own, by its
console script; nothing here imports it.

Limits of bluezoo 1.0.2 that tests must live with:
- one connection per run: a second connect after a disconnect fails
  (org.freedesktop.DBus.Error.Failed from sd_bus_add_object_vtable, error
  17: the first link's GATT objects are still exported), and a disconnect
  by the central leaves the peripheral's notify characteristic subscribed
  (StopNotify is not called), so no notifications flow after a reconnect.
  Both are mended by tests/support/bluezoo/reconnect.patch, applied to a
  copy of the installed package that is run (patched_bluezoo); every test
  still starts its own (start() takes a fraction of a second);
- a disconnect by the peripheral is not delivered to the central;
- errors inside bluezoo's D-Bus methods are logged (bluezoo.log) and
  answered with success: a GATT application with a property bluezoo does
  not know (GattService1.Characteristics) is "registered" but absent;
- no MTU: a write of any length arrives whole; the central's characteristics
  say as their MTU the one the application's characteristic says (512 when
  it says none), which is what bleak reads (max_write_without_response_size,
  MTU - 3): simulator/ble_peripheral.py's `mtu`;
- a burst of notifications with no pause lets the peripheral's D-Bus
  connection die (dbus-fast: EAGAIN on the socket, then a bad descriptor):
  a peripheral paces them (a board's stack does too);
- a scan round reports a device already known to the scanning adapter only
  if its advertisement changed (PropertiesChanged), never again as new: a
  peripheral changes its service data every half second (see
  simulator/ble_peripheral.py);
- the first round runs at once on StartDiscovery, before bleak's
  BleakScanner.start() has returned: a callback registered after start()
  (BleakScanner.find_device_by_filter, advertisement_data()) misses it and
  waits for the next round (--scan-interval, 1 s here); scan_for() below
  hands bleak its callback up front and sees the first round.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

BLUEZ = "org.bluez"

# Anyone may own any name and call anything: the bus is the tests' own.
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""

# Public addresses of the two adapters: hci0 (the gateway's), hci1 (the device's).
ADDRESSES = ("00:00:5E:00:53:00", "00:00:5E:00:53:01")


PATCHES = Path(__file__).parent / "bluezoo"


def patched_bluezoo(into: Path) -> Path:
    """A copy of the installed bluezoo package in into/bluezoo with the
    patches of tests/support/bluezoo applied (reconnect.patch: a central may
    connect again); returns into, for PYTHONPATH. The package is found, not
    imported."""
    spec = importlib.util.find_spec("bluezoo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("bluezoo is not installed (pip install bluezoo)")
    tool = shutil.which("patch")
    if tool is None:
        raise FileNotFoundError("patch is not installed (apt-get install patch)")
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(
        next(iter(spec.submodule_search_locations)),
        into / "bluezoo",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for patch in sorted(PATCHES.glob("*.patch")):
        done = subprocess.run(
            [tool, "-p1", "--forward", "--quiet", "-i", str(patch)],
            cwd=into,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"{patch.name} does not apply to this bluezoo: {done.stdout}{done.stderr}")
    return into


def bluezoo_command(home: Path) -> tuple[list[str], dict[str, str]]:
    """How to run bluezoo, patched (patched_bluezoo in home): the command
    and the variables to add to its environment."""
    path = patched_bluezoo(home)
    command = [sys.executable, "-c", "import sys; from bluezoo import bluezoo; sys.exit(bluezoo.main())"]
    return command, {"PYTHONPATH": str(path)}


async def adapters_on(address: str) -> dict[str, dict[str, Any]]:
    """The adapters org.bluez exports on the bus at address: object path ->
    Adapter1 properties (values unpacked); empty while nobody serves org.bluez."""
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(
                destination=BLUEZ,
                path="/",
                interface="org.freedesktop.DBus.ObjectManager",
                member="GetManagedObjects",
            )
        )
    finally:
        bus.disconnect()
    if reply is None or reply.message_type != MessageType.METHOD_RETURN:
        return {}
    adapters: dict[str, dict[str, Any]] = {}
    for path, interfaces in reply.body[0].items():
        props = interfaces.get("org.bluez.Adapter1")
        if props is not None:
            adapters[path] = {name: variant.value for name, variant in props.items()}
    return adapters


def _run(coro: Any) -> Any:
    """Run a coroutine to completion in a thread of its own: callable from
    plain code and from inside a running event loop alike."""
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            error.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class BluezStack:
    """A private system bus and bluezoo on it, with powered adapters hci0 and hci1.

    start() returns once both adapters are on the bus and powered; address is
    the bus address to hand to both sides (DBUS_SYSTEM_BUS_ADDRESS); stop()
    ends both processes and removes the socket's directory. Logs of both go
    to directory (dbus-daemon.log, bluezoo.log)."""

    def __init__(
        self,
        directory: Path,
        addresses: tuple[str, ...] = ADDRESSES,
        scan_interval: int = 1,
        verbose: bool = True,
    ) -> None:
        self.dir = directory
        self.addresses = addresses
        self.scan_interval = scan_interval
        self.verbose = verbose
        # The socket lives in a short directory of its own: a unix socket's
        # path is limited to 107 bytes, pytest's tmp_path can be longer.
        self._socket_dir: str | None = None
        self.dbus: subprocess.Popen[bytes] | None = None
        self.bluezoo: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.started_in = 0.0

    @property
    def adapters(self) -> list[str]:
        """Adapter names, in the order of addresses: hci0, hci1, ..."""
        return [f"hci{i}" for i in range(len(self.addresses))]

    def env(self) -> dict[str, str]:
        """This process's environment, with the private bus as the system bus."""
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def start(self, timeout: float = 10.0) -> BluezStack:
        began = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_bus(timeout)
            self._start_bluezoo(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began
        return self

    def _start_bus(self, timeout: float) -> None:
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            raise FileNotFoundError("dbus-daemon is not installed (apt-get install dbus)")
        self._socket_dir = tempfile.mkdtemp(prefix="pb-bus-")
        socket = os.path.join(self._socket_dir, "system_bus_socket")
        config = self.dir / "dbus-daemon.conf"
        config.write_text(BUS_CONFIG.format(socket=socket))
        log = (self.dir / "dbus-daemon.log").open("ab")
        # --print-address: the daemon writes its address once it listens
        self.dbus = subprocess.Popen(
            [daemon, f"--config-file={config}", "--nofork", "--nopidfile", "--nosyslog", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        assert self.dbus.stdout is not None
        line = _readline(self.dbus.stdout, timeout)
        if not line:
            raise RuntimeError(f"dbus-daemon gave no address; see {self.dir / 'dbus-daemon.log'}")
        self.address = line.decode().strip()

    def _start_bluezoo(self, timeout: float) -> None:
        command, extra = bluezoo_command(self.dir / "bluezoo-patched")
        command += ["--auto-enable", f"--scan-interval={self.scan_interval}"]
        if self.verbose:
            command.append("-v")
        for address in self.addresses:
            command += ["-a", address]
        log = (self.dir / "bluezoo.log").open("ab")
        self.bluezoo = subprocess.Popen(
            command,
            env={**self.env(), **extra},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wanted = {f"/org/bluez/{name}" for name in self.adapters}
        deadline = time.monotonic() + timeout
        while True:
            if self.bluezoo.poll() is not None:
                raise RuntimeError(
                    f"bluezoo exited with {self.bluezoo.returncode}; see {self.dir / 'bluezoo.log'}"
                )
            adapters = _run(adapters_on(self.address))
            if all(adapters.get(path, {}).get("Powered") for path in wanted):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"bluezoo did not power {sorted(wanted)} in {timeout}s: {adapters}")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """End bluezoo, then the bus (SIGTERM, SIGKILL after timeout); remove the socket."""
        for proc in (self.bluezoo, self.dbus):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.dbus is not None and self.dbus.stdout is not None:
            self.dbus.stdout.close()
        self.bluezoo = self.dbus = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    async def drop(self, adapter: str, address: str) -> None:
        """End adapter's connection to the device at address, as a link lost
        to distance does: both ends see it go (Device1.Disconnect, on
        bluezoo patched to stop the peripheral's notifications)."""
        path = f"/org/bluez/{adapter}/dev_{address.replace(':', '_')}"
        bus = await MessageBus(bus_address=self.address, bus_type=BusType.SYSTEM).connect()
        try:
            reply = await bus.call(
                Message(destination=BLUEZ, path=path, interface="org.bluez.Device1", member="Disconnect")
            )
        finally:
            bus.disconnect()
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            raise RuntimeError(f"cannot disconnect {path}: {reply.body if reply is not None else None}")

    def running(self) -> bool:
        return all(p is not None and p.poll() is None for p in (self.dbus, self.bluezoo))

    def __enter__(self) -> BluezStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def scan_for(service_uuid: str, adapter: str = "hci0", timeout: float = 10.0) -> BLEDevice:
    """The first device advertising service_uuid that adapter sees (bleak,
    active scan), with the detection callback given to the scanner before it
    starts."""
    found: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()

    def seen(device: BLEDevice, adv: AdvertisementData) -> None:
        if service_uuid in adv.service_uuids and not found.done():
            found.set_result(device)

    async with BleakScanner(seen, service_uuids=[service_uuid], bluez={"adapter": adapter}):
        try:
            return await asyncio.wait_for(found, timeout)
        except TimeoutError:
            what = f"{adapter} saw no device advertising {service_uuid} in {timeout}s"
            raise AssertionError(what) from None


def _readline(stream: Any, timeout: float) -> bytes:
    """One line from a pipe, or b"" after timeout."""
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return line[0] if line else b""
