"""The device's serial carrier (firmware/pb/net/serial_link.py, docs/protocol.md
15) on a real line: a pty pair that socat makes, the device's end run by the
real MicroPython unix port (and again by CPython, as the simulator runs it),
the gateway's end read and written here with pyserial and frames.py. Both
ways byte for byte; console text and noise passed over; a frame cut short
ended by a quiet line; the cable pulled (socat killed) and plugged back in
on the same paths, and the link opening the port again by itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware.pb.net.frames import Decoder, encode

from ..support.processes import MICROPYTHON, SMALL_HEAP
from ..support.ptys import Line
from ..support.wait import wait_for

FIRMWARE_PB = Path(__file__).resolve().parents[2] / "firmware" / "pb"
HELLO = b'{"v": 1}'
CHUNK = bytes(range(256)) * 16  # an update chunk's worth of every byte value

# The device: a birth, three events queued before the port opens, and an
# echo of every message it takes ("stats": its link's counters instead).
DEVICE = """
import sys, json
import asyncio
from pb.net.serial_link import SerialLink

link = SerialLink("d1", sys.argv[1], backoff_min_ms=50, backoff_max_ms=400)
link.subscribe("pb/d1/cmd", 1)
link.subscribe("pb/d1/ota/#", 0)
link.birth = lambda: [("pb/d1/hello", b'{"v": 1}', 1, True)]


def on_message(topic, payload, retain):
    if payload == b"stats":
        link.publish("pb/d1/reply", json.dumps(link.stats), 1)
    else:
        link.publish("pb/d1/reply", topic.encode() + b":" + payload, 1)


link.on_message = on_message
link.on_up = lambda: print("up", link.stats["connects"])
link.on_down = lambda reason: print("down", reason)
for i in range(3):
    link.publish("pb/d1/event", b'{"n": %d}' % i)
asyncio.run(link.run())
"""

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")


class GatewayEnd(serial.Serial):  # type: ignore[misc]  # (pyserial has no types)
    """The gateway's end. pyserial's open() empties the input: not here, as
    what the device says when it opens the port may come before."""

    def _reset_input_buffer(self) -> None:
        pass

    def take(self, n: int, timeout: float = 10.0) -> bytes:
        """Exactly n bytes, waiting at most timeout for them."""
        got = b""
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            got += self.read(n - len(got))
        assert len(got) == n, f"{len(got)} of {n} bytes came: {got[:200]!r}"
        return got

    def frame(self, timeout: float = 5.0) -> tuple[str, bytes, int]:
        """The one frame that comes next, within timeout: (kind, payload, bytes passed over)."""
        dec = Decoder()
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            got += dec.feed(self.read(300))
        ((kind, payload),) = got
        return kind, payload, dec.skipped


INTERPRETERS = {
    "unix-port": pytest.param(
        [str(MICROPYTHON), "-X", f"heapsize={SMALL_HEAP}"], marks=pytest.mark.micropython
    ),
    "cpython": pytest.param([sys.executable, "-u"]),
}


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    ln = Line(tmp_path)
    ln.plug()
    yield ln
    ln.pull()


@pytest.mark.parametrize("interpreter", list(INTERPRETERS.values()), ids=list(INTERPRETERS))
def test_a_serial_link_carries_frames_both_ways_and_comes_back_after_the_cable(
    interpreter: list[str], line: Line, tmp_path: Path
) -> None:
    fw = tmp_path / "fw"
    shutil.copytree(FIRMWARE_PB, fw / "pb", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (fw / "device.py").write_text(DEVICE)
    out = tmp_path / "device.out"
    gw = GatewayEnd(line.gw, timeout=0.1)
    # not a session of its own: the unix port cannot open a tty O_NOCTTY, so
    # a session leader would take the port as its terminal and die of the
    # hang-up's SIGHUP when the cable goes
    with out.open("wb") as log:
        dev = subprocess.Popen(
            [*interpreter, "device.py", line.dev],
            cwd=fw,
            env={"MICROPYPATH": f"{fw}:.frozen", "PYTHONPATH": str(fw), "PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def said(text: str) -> bool:
        if dev.poll() is not None:
            raise AssertionError(f"the device exited: {out.read_text()}")
        return text in out.read_text()

    def reply(topic: str, payload: bytes) -> bytes:
        return bytes(encode("reply", topic.encode() + b":" + payload))

    try:
        # the device's birth, then what it queued before the port opened
        first = encode("hello", HELLO) + b"".join(encode("event", b'{"n": %d}' % i) for i in range(3))
        assert gw.take(len(first)) == first
        wait_for(lambda: said("up 1"), 5, what="the link up")

        # console text, a kind the device did not subscribe to, noise, and
        # the largest payload: what it takes comes back byte for byte
        gw.write(
            b"boot: ok\r\n"
            + encode("state", b'{"state": "online"}')
            + encode("cmd", b'{"op": "ping"}')
            + b"\x00\xfa\xfa\xce noise"
            + encode("ota/chunk", CHUNK)
        )
        want = reply("pb/d1/cmd", b'{"op": "ping"}') + reply("pb/d1/ota/chunk", CHUNK)
        assert gw.take(len(want)) == want

        # a frame cut short holds back the next one until the line has been
        # quiet for idle_ms (500): then it is dropped and the next one taken
        t0 = time.monotonic()
        gw.write(encode("cmd", b"x" * 3000)[:40] + encode("cmd", b"after"))
        want = reply("pb/d1/cmd", b"after")
        assert gw.take(len(want)) == want
        assert 0.45 < time.monotonic() - t0 < 3

        gw.write(encode("cmd", b"stats"))
        kind, payload, skipped = gw.frame()
        assert kind == "reply" and skipped == 0
        stats = json.loads(payload)
        assert stats["received"] == 4  # ping, chunk, after, stats: not the state
        assert stats["connects"] == 1 and stats["dropped"] == 0
        assert stats["bad"] >= 1 and stats["noise"] > 0

        # the cable pulled: the device sees the hang-up and tries the port
        # again and again (its path now leads nowhere) until it is back
        gw.close()
        line.pull()
        wait_for(lambda: said("down"), 5, what="the link down")
        time.sleep(0.5)
        assert not said("up 2")
        line.plug()
        gw = GatewayEnd(line.gw, timeout=0.1)
        assert gw.take(len(encode("hello", HELLO))) == encode("hello", HELLO)
        wait_for(lambda: said("up 2"), 5, what="the link up again")
        gw.write(encode("cmd", b"again"))
        want = reply("pb/d1/cmd", b"again")
        assert gw.take(len(want)) == want
        assert dev.poll() is None
    finally:
        gw.close()
        with contextlib.suppress(ProcessLookupError):
            dev.kill()
        dev.wait(10)


# The device again, its event loop timed while it sends more than a line
# takes: 400 messages of 1 KB, one each 10 ms, to a gateway that reads none
# of them for 2 s.
FLOOD = """
import sys, json
import asyncio
from pb.compat import sleep_ms, ticks_diff, ticks_ms
from pb.net.serial_link import SerialLink

link = SerialLink("d1", sys.argv[1], queue_size=16)
worst = [0]


async def ticker():
    last = ticks_ms()
    while True:
        await sleep_ms(10)
        now = ticks_ms()
        worst[0] = max(worst[0], ticks_diff(now, last))
        last = now


async def main():
    asyncio.create_task(ticker())
    asyncio.create_task(link.run())
    for i in range(400):
        link.publish("pb/d1/telemetry", b"%04d" % i + b"t" * 1000)
        await sleep_ms(10)
    while link.pending():
        await sleep_ms(10)
    print(json.dumps({"worst_ms": worst[0], "stats": link.stats}))


asyncio.run(main())
"""


@pytest.mark.parametrize("interpreter", list(INTERPRETERS.values()), ids=list(INTERPRETERS))
def test_a_gateway_that_does_not_read_holds_back_messages_and_not_the_device(
    interpreter: list[str], line: Line, tmp_path: Path
) -> None:
    fw = tmp_path / "fw"
    shutil.copytree(FIRMWARE_PB, fw / "pb", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (fw / "device.py").write_text(FLOOD)
    gw = GatewayEnd(line.gw, timeout=0.05)
    try:
        dev = subprocess.Popen(
            [*interpreter, "device.py", line.dev],
            cwd=fw,
            env={"MICROPYPATH": f"{fw}:.frozen", "PYTHONPATH": str(fw), "PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        time.sleep(2)  # (the ptys and socat hold some 30 KB: the rest waits)
        dec = Decoder()
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + 20
        while dev.poll() is None and time.monotonic() < deadline:
            got += dec.feed(gw.read(65536))
        got += dec.feed(gw.read(65536))
        out, _ = dev.communicate(timeout=10)
    finally:
        gw.close()
        with contextlib.suppress(ProcessLookupError):
            dev.kill()
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["worst_ms"] < 250, report  # (blocking writes held it for as long as the gateway)
    stats = report["stats"]
    assert stats["dropped"] > 0 and stats["sent"] + stats["dropped"] == 400, stats
    # what went out came whole and in order
    assert dec.skipped == 0 and dec.dropped == 0
    numbers = [int(p[:4]) for _, p in got]
    assert len(numbers) == stats["sent"] and numbers == sorted(numbers) and numbers[-1] == 399
    assert all(k == "telemetry" and p[4:] == b"t" * 1000 for k, p in got)


async def test_a_port_that_is_not_a_serial_port_is_tried_again_until_closed(tmp_path: Path) -> None:
    from firmware.pb.net.serial_link import SerialLink

    downs: list[str] = []
    link = SerialLink("d1", str(tmp_path / "not-a-tty"), backoff_min_ms=10, backoff_max_ms=20)
    link.on_down = downs.append
    (tmp_path / "not-a-tty").write_bytes(b"")
    run = asyncio.create_task(link.run())
    await asyncio.sleep(0.2)
    assert not link.up and not downs and link.stats["connects"] == 0
    assert link.last_error is not None and link.last_error.startswith("OSError")
    await link.close()
    await asyncio.wait_for(run, 2)


def test_publish_frames_the_topic_tail_and_bounds_the_queue() -> None:
    from firmware.pb.errors import ProtocolError
    from firmware.pb.net.serial_link import SerialLink

    link = SerialLink("d1", "/nonexistent", queue_size=2)
    with pytest.raises(ProtocolError) as err:
        link.publish("pb/d2/event", b"{}")
    assert err.value.code == "bad_topic"
    with pytest.raises(ProtocolError) as err:
        link.publish("pb/d1/ota/chunk", b"x" * 4400)
    assert err.value.code == "too_large"
    assert link.publish("pb/d1/state", b"1", 1) and link.publish("pb/d1/telemetry", b"2", 0)
    assert not link.publish("pb/d1/event", b"3", 1)  # the QoS 0 one goes first
    assert not link.publish("pb/d1/telemetry", b"4", 0)  # and a QoS 0 one finds no room
    assert [b"".join(f) for f, _ in link._queue] == [encode("state", b"1"), encode("event", b"3")]
    assert link.pending() == 2 and link.stats["dropped"] == 2


# An ESP32's UART as the line (config.json "link": {"serial": "uart2", "tx":
# 17, "rx": 16}): the ESP32 backend's uart() makes it, with a stand-in for
# machine.UART on the unix port (no UART here) whose pins lead to the pty: a
# stream read as a UART with timeout 0 reads, what has come.
MACHINE = """
import termios

MADE = []


def UART(id, baudrate=9600, tx=None, rx=None, timeout=None, rxbuf=None):
    MADE.append((id, baudrate, tx, rx, timeout, rxbuf))
    with open("uart.path") as f:
        path = f.read().strip()
    port = open(path, "r+b", buffering=0)
    termios.setraw(port.fileno())
    a = termios.tcgetattr(port.fileno())
    a[6][6] = a[6][5] = 0  # (VMIN, VTIME: a read returns what has come)
    termios.tcsetattr(port.fileno(), termios.TCSANOW, a)
    return port
"""

ON_A_UART = """
import sys, json
import asyncio
import machine
from pb.hal.esp32 import Esp32Hal
from pb.net.serial_link import SerialLink

hal = Esp32Hal({"capabilities": {}}, "/")
link = SerialLink("d1", hal.uart({"serial": "uart2", "baud": 115200, "tx": 17, "rx": 16}))
link.subscribe("pb/d1/cmd", 1)
link.subscribe("pb/d1/ota/#", 0)
link.birth = lambda: [("pb/d1/hello", b'{"v": 1}', 1, True)]


def on_message(topic, payload, retain):
    if payload == b"stats":
        link.publish("pb/d1/reply", json.dumps({"made": machine.MADE, "stats": link.stats}), 1)
    else:
        link.publish("pb/d1/reply", topic.encode() + b":" + payload, 1)


link.on_message = on_message
asyncio.run(link.run())
"""


@pytest.mark.micropython
def test_a_boards_uart_carries_the_line(line: Line, tmp_path: Path) -> None:
    fw = tmp_path / "fw"
    shutil.copytree(FIRMWARE_PB, fw / "pb", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (fw / "machine.py").write_text(MACHINE)
    (fw / "uart.path").write_text(line.dev)
    (fw / "device.py").write_text(ON_A_UART)
    gw = GatewayEnd(line.gw, timeout=0.1)
    dev = subprocess.Popen(
        [str(MICROPYTHON), "-X", f"heapsize={SMALL_HEAP}", "device.py"],
        cwd=fw,
        env={"MICROPYPATH": f"{fw}:.frozen", "PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert gw.take(len(encode("hello", HELLO))) == encode("hello", HELLO)
        gw.write(
            b"boot: ok\r\n" + encode("cmd", b'{"op": "ping"}') + b"\x00 noise" + encode("ota/chunk", CHUNK)
        )
        want = encode("reply", b'pb/d1/cmd:{"op": "ping"}') + encode("reply", b"pb/d1/ota/chunk:" + CHUNK)
        assert gw.take(len(want)) == want
        gw.write(encode("cmd", b"stats"))
        _, payload, _ = gw.frame()
        report = json.loads(payload)
        # the UART and pins the link names, at its rate, reads not waiting, room for a frame
        assert report["made"] == [[2, 115200, 17, 16, 0, 4608]]
        assert report["stats"]["received"] == 3 and report["stats"]["noise"] > 0
    finally:
        gw.close()
        with contextlib.suppress(ProcessLookupError):
            dev.kill()
        out, _ = dev.communicate(timeout=10)
    assert b"Traceback" not in out, out.decode(errors="replace")
