# The Bluetooth LE carrier's values (docs/protocol.md 16), sans-I/O: the
# frames of the serial carrier (frames.py) cut into ATT values of at most
# ATT_MTU - 3 bytes, and joined again. The device, the simulator's
# peripheral and the gateway share it.
#
# A value: a sequence number (1 byte, 0-255, wrapping; each characteristic
# direction counts its own, from 0 at every connection), then 1 to size - 1
# bytes of one frame. A frame starts a value; no value carries two frames.
from ..compat import const
from .frames import Decoder

_M0 = const(0xFA)  # a frame's start marker (frames.py)
_M1 = const(0xCE)
_MIN = const(20)  # ATT_MTU 23, the default until the MTU is exchanged
_MAX = const(512)  # the longest attribute value ATT allows


class Sender:
    """One characteristic direction's values: values() cuts a frame into
    values of at most size bytes (ATT_MTU - 3, taken as 20-512; set it again
    after an MTU exchange) and counts seq on. Frames go one after the other,
    never two at a time."""

    def __init__(self, size=_MIN):
        self.size = size
        self.seq = 0

    def values(self, frame):
        """The values of frame (bytes or any buffer), in order, each a fresh
        bytearray; seq counts each as it is given."""
        n = min(max(self.size, _MIN), _MAX) - 1
        mv = memoryview(frame)
        for i in range(0, len(mv), n):
            part = mv[i : i + n]
            v = bytearray(len(part) + 1)
            v[0] = self.seq
            v[1:] = part
            self.seq = (self.seq + 1) & 0xFF
            yield v


class Joiner:
    """Messages out of one characteristic direction's values: feed() each
    value as it comes and get the frames it completes as (kind, payload).
    A value out of sequence (one went missing) drops the frame being joined
    and the values after it until one starts a frame (gaps counts them); a
    repeat of the last is dropped (dups); one with no frame byte is ignored
    (bad). It holds at most one frame (decoder: its counts). handler and
    lean are the Decoder's: frames handed on as they complete, and the
    room of the largest taken at the start (else as they need it)."""

    def __init__(self, handler=None, lean=True):
        self.gaps = 0
        self.dups = 0
        self.bad = 0
        self.decoder = Decoder(handler, lean)
        self._last = -1  # the last sequence number taken; none yet
        self._lost = False  # after a gap: waiting for a value that starts a frame

    def feed(self, value):
        """The frames completed by value (bytes or any buffer), in order."""
        out = []  # type: list
        if len(value) < 2:
            self.bad += 1
            return out
        seq = value[0]
        if seq == self._last:
            self.dups += 1
            return out
        if seq != (self._last + 1) & 0xFF:
            self.gaps += 1
            out = self.decoder.idle()
            self._lost = True
        self._last = seq
        if self._lost:
            if len(value) < 3 or value[1] != _M0 or value[2] != _M1:
                self.decoder.skipped += len(value) - 1
                return out
            self._lost = False
        return out + self.decoder.feed(memoryview(value)[1:])

    def idle(self):
        """The link has gone quiet or down: the frame being joined will not
        be completed (frames.Decoder.idle)."""
        return self.decoder.idle()
