"""A real SNTP server on a loopback UDP port, for the device's clock
(docs/ota.md 2.3): it answers each request as a test tells it to, or not
at all, or with garbage."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

ERA = 2208988800  # seconds from 1900 to 1970
# an answer: (request bytes) -> reply bytes, or None for silence
Answer = Callable[[bytes], "bytes | None"]


def ntp_reply(request: bytes, unix: float, *, stratum: int = 2, mode: int = 4, echo: bool = True) -> bytes:
    """A server's answer to request, stating the Unix time unix."""
    secs = int(unix) + ERA
    frac = int((unix % 1) * 2**32)
    head = bytes([(0 << 6) | (4 << 3) | mode, stratum, 6, 0xEC]) + bytes(20)
    origin = request[40:48] if echo else bytes(8)
    ts = struct.pack(">II", secs % 2**32, frac)
    return head + origin + ts + ts + ts


class SntpServer:
    """An SNTP server on a loopback UDP port: answers each request with answer(request)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            self.requests.append(data)
            for reply in self._replies(data):
                self.sock.sendto(reply, peer)

    def _replies(self, data: bytes) -> list[bytes]:
        out = self.answer(data)
        return [] if out is None else [out]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
