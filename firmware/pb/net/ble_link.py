# The device's end of the Bluetooth LE carrier (docs/protocol.md 16, 17): a
# connection from the gateway is a line as a serial port is, so this is the
# serial link (pb/net/serial_link.py: its queue, its proof of identity, its
# delivery, the MQTT client's interface) over GATT values instead of a byte
# stream: frames cut into notifications (pb/net/ble_frag.py Sender), and the
# values the gateway writes to control and bulk joined again (Joiner).
#
# The radio is the board's: an object with start(link) (register the
# service, advertise, and from then on call link.connected(),
# link.written(which, value) (which: 0 control, 1 bulk), link.mtu(n) and
# link.disconnected() as they happen, advertising again after a disconnect),
# notify(value) (True once the stack took it, False while it is busy) and
# drop() (end the connection). pb/net/ble_radio.py is an ESP32's, on
# MicroPython's bluetooth module; the simulator's shirt has one on BlueZ
# (simulator/ble_radio.py), running this same code.
from ..compat import TimeoutError, asyncio, const, sleep_ms, wait_for_ms
from ..errors import HalError
from .ble_frag import Joiner, Sender
from .serial_link import SerialLink


def for_device(config, hal, key, **kwargs):
    """The link on the board's radio (hal.radio(config): pb/hal/esp32.py's,
    the simulator's). Raises HalError on a board that has none."""
    if not hasattr(hal, "radio"):
        raise HalError("this board has no Bluetooth LE radio (%s)" % hal.name)
    return BleLink(config["device"], hal.radio(config), key, **kwargs)


_BUSY = const(10)  # ms between tries of a notification the stack could not take
_WAIT = const(1000)  # ms between looks at whether the link was closed, while no gateway is connected


class BleLink(SerialLink):
    """A Bluetooth LE link: SerialLink's interface and behaviour, on a
    radio (see above). The line is up once the gateway has connected and
    both ends have proven themselves; a disconnect ends the session, and
    the next connection starts a new one."""

    def __init__(self, device, radio, key=None, queue_size=32, lean=True):
        SerialLink.__init__(self, device, "ble", 0, queue_size, key=key, lean=False)
        self.radio = radio
        self._lean = lean
        self._tx = Sender()
        self._rx = (Joiner(None, False), Joiner(None, False))  # (new ones at each connection)
        self._conn = asyncio.Event()
        self._started = False

    # ---- the radio's events ----------------------------------------------

    def connected(self):
        # a new connection counts its values from 0 on every characteristic
        self._tx = Sender()
        self._rx = (Joiner(self._deliver, self._lean), Joiner(self._deliver, self._lean))
        self._conn.set()

    def written(self, which, value):
        rx = self._rx
        if which < 2:
            j = rx[which]  # type: Joiner
            j.feed(value)
            self.stats["noise"] = rx[0].decoder.skipped + rx[1].decoder.skipped
            self.stats["bad"] = rx[0].decoder.dropped + rx[1].decoder.dropped + j.gaps

    def mtu(self, n):
        self._tx.size = n - 3

    def disconnected(self):
        self._conn.clear()
        self._end.set()

    # ---- the session -----------------------------------------------------

    async def _session(self):
        if not self._started:
            await self.radio.start(self)
            self._started = True
        while not self._conn.is_set():  # (a gateway connects when it finds it)
            if self._closed:
                return
            try:
                await wait_for_ms(self._conn.wait(), _WAIT)
            except TimeoutError:
                pass
        failure = []  # type: list[BaseException]
        self._end.clear()
        try:
            await self._serve(None, None, failure)
            if not self._conn.is_set():
                raise EOFError("the gateway disconnected")
        finally:
            if self._closed:
                self.radio.drop()

    async def _write(self, f, poll, data):
        # one frame (its pieces), in notifications of the connection's size
        for v in self._tx.values(data[0] + data[1] + data[2]):
            while not self.radio.notify(v):
                if not self._conn.is_set():
                    raise EOFError("the gateway disconnected")
                await sleep_ms(_BUSY)
