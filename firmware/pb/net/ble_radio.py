# An ESP32's Bluetooth LE radio for the BLE link (pb/net/ble_link.py), on
# MicroPython's bluetooth module: the GATT service of docs/protocol.md 16
# registered, advertised (its UUID in the advertisement, the device id in the
# scan response), and the stack's events turned into the link's calls.
# The UUIDs are the protocol's, and their one owner: the simulator's
# peripheral and the gateway's bridge import them from here.
from ..compat import const

SERVICE_UUID = "6c1a0001-3b5e-4f2a-9c7d-8e4b2a1f5d60"
CONTROL_UUID = "6c1a0002-3b5e-4f2a-9c7d-8e4b2a1f5d60"
BULK_UUID = "6c1a0003-3b5e-4f2a-9c7d-8e4b2a1f5d60"
NOTIFY_UUID = "6c1a0004-3b5e-4f2a-9c7d-8e4b2a1f5d60"

_CONNECT = const(1)  # the bluetooth module's IRQ events
_DISCONNECT = const(2)
_WRITE = const(3)
_MTU = const(21)
_F_WRITE_NR = const(0x0004)  # characteristic flags
_F_WRITE = const(0x0008)
_F_NOTIFY = const(0x0010)
_MTU_MAX = const(517)
_VALUE = const(512)  # the longest value a characteristic takes
_ADV_US = const(250000)  # advertising interval


def adv_payload(name):
    """(advertisement, scan response): flags and the service's 128-bit UUID;
    the complete local name."""
    u = bytes.fromhex(SERVICE_UUID.replace("-", ""))
    adv = bytes((2, 0x01, 0x06, 17, 0x07)) + bytes(reversed(u))  # (little-endian on the air)
    n = name.encode()[:29]
    return adv, bytes((len(n) + 1, 0x09)) + n


class Radio:
    """The board's radio, for one BleLink. name: what it advertises."""

    def __init__(self, name):
        self.name = name
        self._ble = None
        self._link = None
        self._conn = None  # the gateway's connection handle
        self._h = (0, 0, 0)  # the value handles of control, bulk and notify

    async def start(self, link):
        import bluetooth  # (a board's)

        ble = self._ble = bluetooth.BLE()
        self._link = link
        ble.active(True)
        ble.config(gap_name=self.name, mtu=_MTU_MAX)
        U = bluetooth.UUID
        svc = (
            U(SERVICE_UUID),
            ((U(CONTROL_UUID), _F_WRITE), (U(BULK_UUID), _F_WRITE_NR), (U(NOTIFY_UUID), _F_NOTIFY)),
        )
        ((c, b, n),) = ble.gatts_register_services((svc,))
        # one value of the most a write may carry; no appending: each write
        # is read whole by the event it raises (a write before that read is
        # lost, and the link's sequence numbers tell it)
        ble.gatts_set_buffer(c, _VALUE)
        ble.gatts_set_buffer(b, _VALUE)
        self._h = (c, b, n)  # type: ignore[assignment]  # (ints: the stub says memoryviews)
        ble.irq(self._irq)
        self._advertise()

    def _advertise(self):
        adv, resp = adv_payload(self.name)
        self._ble.gap_advertise(_ADV_US, adv_data=adv, resp_data=resp, connectable=True)

    def _irq(self, event, data):
        # (scheduled, not a hard interrupt: it may allocate)
        link = self._link
        if event == _CONNECT:
            if self._conn is not None:  # (one gateway at a time)
                self._ble.gap_disconnect(data[0])
                return
            self._conn = data[0]
            link.connected()
        elif event == _DISCONNECT:
            if data[0] == self._conn:
                self._conn = None
                link.disconnected()
            self._advertise()
        elif event == _WRITE:
            conn, handle = data
            if conn == self._conn and handle in self._h[:2]:
                link.written(self._h.index(handle), self._ble.gatts_read(handle))
        elif event == _MTU:
            if data[0] == self._conn:
                link.mtu(data[1])

    def notify(self, value):
        """Send one value to the gateway; False while the stack has no room
        (or no gateway is connected)."""
        if self._conn is None:
            return False
        try:
            self._ble.gatts_notify(self._conn, self._h[2], value)
        except OSError:
            return False
        return True

    def drop(self):
        """End the connection (the link is closed)."""
        if self._conn is not None:
            try:
                self._ble.gap_disconnect(self._conn)
            except OSError:
                pass
