"""A simulated device's Bluetooth LE radio: what the firmware's BLE link
(firmware/pb/net/ble_link.py, the same code a board runs) drives, on a real
GATT peripheral registered with BlueZ over D-Bus (simulator/ble_peripheral.py).
The radio interface is the board's (firmware/pb/net/ble_radio.py): start(link),
notify(value) -> bool, drop(). The gateway's turning notifications on stands
for its connection, and off for its disconnect: that is what a peripheral's
D-Bus side sees of both."""

from __future__ import annotations

import time
from typing import Any

from .ble_peripheral import BlePeripheral

_GAP_S = 0.002  # the least time between two notifications


class SimRadio:
    """One virtual device's radio on a BlueZ adapter (hci1, say)."""

    def __init__(self, adapter: str, name: str, bus_address: str | None = None) -> None:
        self.adapter = adapter
        self.name = name
        self.bus_address = bus_address
        self.peripheral: BlePeripheral | None = None
        self._link: Any = None
        self._last = 0.0  # when the last notification went

    async def start(self, link: Any) -> None:
        """Serve link. After a reset the radio is the same: the peripheral
        stays registered, and a gateway still subscribed stands for a
        connection the new link proves itself on again (a board's reset
        would have dropped it, and the gateway connected again)."""
        self._link = link
        if self.peripheral is not None:
            if self.peripheral.subscribed:
                link.connected()
            return
        p = BlePeripheral(
            adapter=self.adapter,
            name=self.name,
            on_control=lambda value: self._written(0, value),
            on_bulk=lambda value: self._written(1, value),
            bus_address=self.bus_address,
        )
        p.on_subscribed(self._subscribed)
        await p.start()
        self.peripheral = p

    def _subscribed(self, on: bool) -> None:
        if on:
            self._link.connected()
            mtu = self.peripheral.mtu if self.peripheral is not None else None
            if mtu:
                self._link.mtu(mtu)
        else:
            self._link.disconnected()

    def _written(self, which: int, value: bytes) -> None:
        p = self.peripheral
        if p is not None and p.mtu:
            self._link.mtu(p.mtu)
        self._link.written(which, value)

    def notify(self, value: bytes) -> bool:
        # (notifications sent back to back, with no pause, break the peripheral's
        # D-Bus connection: 2 ms apart, and the link tries again meanwhile)
        now = time.monotonic()
        if self.peripheral is None or now - self._last < _GAP_S:
            return False
        self._last = now
        return self.peripheral.send(bytes(value))

    def drop(self) -> None:
        """(a peripheral cannot end the central's connection over D-Bus: it
        stops answering, and the gateway's writes go nowhere)"""

    async def stop(self) -> None:
        """Withdraw the service and the advertisement (the board powered off)."""
        p, self.peripheral = self.peripheral, None
        if p is not None:
            await p.stop()
