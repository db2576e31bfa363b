"""The simulated device's Bluetooth Low Energy side: a GATT peripheral
registered with BlueZ (or anything that serves org.bluez the same way) over
D-Bus, with dbus-fast. CPython only.

One primary service, SERVICE_UUID, with three characteristics:

- control (CONTROL_UUID): write with response, gateway -> device;
- bulk (BULK_UUID): write without response, gateway -> device;
- notify (NOTIFY_UUID): notify, device -> gateway.

An LE advertisement carries SERVICE_UUID in its service UUIDs and a small
service data entry under it whose value changes every `rotate_s` seconds
(a scanner started late then still sees the device change, and reports it).
Each characteristic says the ATT MTU in its MTU property (`mtu`, 517 by
default, what BlueZ asks for): bluezoo, which exchanges none, hands it to
the central as the connection's, where bleak reads it
(max_write_without_response_size, MTU - 3).

    async with BlePeripheral(on_control=..., on_bulk=...) as device:
        await device.wait_subscribed()
        await device.notify(b"...")

The bus is the system bus (DBUS_SYSTEM_BUS_ADDRESS, if set) unless
bus_address is given. Write callbacks take the written bytes and may return
an awaitable, which is awaited before the write is answered (a write with
response is then only acknowledged once the callback is done).
"""

# dbus-fast reads the D-Bus signatures from the annotations at class
# creation: no "from __future__ import annotations" here.
import asyncio
import inspect
import itertools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from dbus_fast import BusType, DBusError, Message, MessageType, PropertyAccess, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusDict,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt16,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from firmware.pb.net.ble_radio import BULK_UUID, CONTROL_UUID, NOTIFY_UUID, SERVICE_UUID

BLUEZ = "org.bluez"
DBusStrList = Annotated[list[str], DBusSignature("as")]


WriteCallback = Callable[[bytes], Awaitable[None] | None]

_instances = itertools.count()


class _Service(ServiceInterface):
    def __init__(self, uuid: str) -> None:
        super().__init__("org.bluez.GattService1")
        self.uuid = uuid

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return True


class _Characteristic(ServiceInterface):
    """org.bluez.GattCharacteristic1 served by the application."""

    def __init__(
        self, uuid: str, service: str, flags: list[str], on_write: WriteCallback | None, mtu: int
    ) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self.uuid = uuid
        self.mtu = mtu
        self.service = service
        self.flags = flags
        self.on_write = on_write
        self.on_notifying: Callable[[bool], None] | None = None
        self.value = b""
        self.notifying = False
        self.subscribed = asyncio.Event()
        self.confirmed = 0

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> DBusObjectPath:
        return self.service

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> DBusStrList:
        return self.flags

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self.value

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> DBusBool:
        return self.notifying

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> DBusUInt16:
        return self.mtu

    @dbus_method()
    def ReadValue(self, options: DBusDict) -> DBusBytes:
        if "read" not in self.flags:
            raise DBusError("org.bluez.Error.NotPermitted", "Read not permitted")
        return self.value

    @dbus_method()
    async def WriteValue(self, value: DBusBytes, options: DBusDict) -> None:
        if self.on_write is None:
            raise DBusError("org.bluez.Error.NotPermitted", "Write not permitted")
        mtu = options.get("mtu")
        if mtu is not None:
            self.mtu = int(mtu.value)
        result = self.on_write(bytes(value))
        if inspect.isawaitable(result):
            await result

    @dbus_method()
    def StartNotify(self) -> None:
        if "notify" not in self.flags:
            raise DBusError("org.bluez.Error.NotSupported", "Notify not supported")
        if not self.notifying:
            self.notifying = True
            self.emit_properties_changed({"Notifying": True})
            if self.on_notifying is not None:
                self.on_notifying(True)
        self.subscribed.set()

    @dbus_method()
    def StopNotify(self) -> None:
        if self.notifying:
            self.notifying = False
            self.emit_properties_changed({"Notifying": False})
            if self.on_notifying is not None:
                self.on_notifying(False)
        self.subscribed.clear()

    @dbus_method()
    def Confirm(self) -> None:
        # the central's acknowledgement of a value sent; bluezoo calls it
        # after every notification, not only after indications
        self.confirmed += 1

    def send(self, value: bytes) -> None:
        self.value = value
        self.emit_properties_changed({"Value": value})


class _Advertisement(ServiceInterface):
    """org.bluez.LEAdvertisement1: connectable, discoverable, our service."""

    def __init__(self, name: str, service_uuid: str) -> None:
        super().__init__("org.bluez.LEAdvertisement1")
        # not self.name: that is the interface's name in dbus-fast
        self.local_name = name
        self.service_uuid = service_uuid
        self.data = b"\x00"
        self.released = False

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return "peripheral"

    @dbus_property(access=PropertyAccess.READ)
    def ServiceUUIDs(self) -> DBusStrList:
        return [self.service_uuid]

    @dbus_property(access=PropertyAccess.READ)
    def ServiceData(self) -> DBusDict:
        return {self.service_uuid: Variant("ay", self.data)}

    @dbus_property(access=PropertyAccess.READ)
    def LocalName(self) -> DBusStr:
        return self.local_name

    @dbus_property(access=PropertyAccess.READ)
    def Discoverable(self) -> DBusBool:
        return True

    @dbus_method()
    def Release(self) -> None:
        self.released = True

    def set_data(self, data: bytes) -> None:
        self.data = data
        self.emit_properties_changed({"ServiceData": {self.service_uuid: Variant("ay", data)}})


class BlePeripheral:
    """A GATT peripheral on one adapter: start() registers the application
    and the advertisement, stop() withdraws both and leaves the bus.

    on_control / on_bulk receive the bytes written to the control and bulk
    characteristics; notify() sends bytes to the gateway on the notify
    characteristic (once the gateway has subscribed)."""

    def __init__(
        self,
        adapter: str = "hci1",
        name: str = "permabeta",
        on_control: WriteCallback | None = None,
        on_bulk: WriteCallback | None = None,
        bus_address: str | None = None,
        rotate_s: float | None = 0.5,
        mtu: int = 517,
    ) -> None:
        self.adapter_path = f"/org/bluez/{adapter}"
        self.name = name
        self.bus_address = bus_address
        self.rotate_s = rotate_s
        root = f"/org/permabeta/ble{next(_instances)}"
        self.app_path = f"{root}/app"
        self.adv_path = f"{root}/advertisement0"
        service_path = f"{self.app_path}/service0"
        self._service = _Service(SERVICE_UUID)
        self._control = _Characteristic(CONTROL_UUID, service_path, ["write"], on_control, mtu)
        self._bulk = _Characteristic(BULK_UUID, service_path, ["write-without-response"], on_bulk, mtu)
        self._notify = _Characteristic(NOTIFY_UUID, service_path, ["notify"], None, mtu)
        self._objects: dict[str, ServiceInterface] = {service_path: self._service}
        for i, char in enumerate((self._control, self._bulk, self._notify)):
            path = f"{service_path}/char{i}"
            self._objects[path] = char
        self._advertisement = _Advertisement(name, SERVICE_UUID)
        self._bus: MessageBus | None = None
        self._rotating: asyncio.Task[None] | None = None

    @property
    def subscribed(self) -> bool:
        """Whether the gateway has notifications on."""
        return self._notify.notifying

    async def wait_subscribed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._notify.subscribed.wait(), timeout)

    async def notify(self, data: bytes) -> None:
        """Send data on the notify characteristic (whole: no MTU is applied here)."""
        if not self._notify.notifying:
            raise RuntimeError("the gateway has not subscribed to notifications")
        self._notify.send(bytes(data))

    def send(self, data: bytes) -> bool:
        """Send data on the notify characteristic now; False if the gateway
        has not subscribed."""
        if not self._notify.notifying:
            return False
        self._notify.send(bytes(data))
        return True

    @property
    def mtu(self) -> int | None:
        """The ATT MTU: the characteristics' MTU property, or what BlueZ
        said with a write."""
        return self._control.mtu or self._bulk.mtu

    def on_subscribed(self, callback: Callable[[bool], None]) -> None:
        """callback(True) when the gateway turns notifications on, (False) off."""
        self._notify.on_notifying = callback

    async def start(self) -> "BlePeripheral":
        bus = MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM)
        self._bus = await bus.connect()
        for path, interface in self._objects.items():
            self._bus.export(path, interface)
        self._bus.export(self.adv_path, self._advertisement)
        try:
            await self._call("org.bluez.GattManager1", "RegisterApplication", "oa{sv}", [self.app_path, {}])
            await self._call(
                "org.bluez.LEAdvertisingManager1", "RegisterAdvertisement", "oa{sv}", [self.adv_path, {}]
            )
        except BaseException:
            await self.stop()
            raise
        if self.rotate_s:
            self._rotating = asyncio.create_task(self._rotate(self.rotate_s))
        return self

    async def stop(self) -> None:
        """Withdraw the advertisement and the application; leave the bus.
        Errors of the withdrawal (a stack already gone) are ignored."""
        if self._rotating is not None:
            self._rotating.cancel()
            self._rotating = None
        bus, self._bus = self._bus, None
        if bus is None:
            return
        for interface, member, path in (
            ("org.bluez.LEAdvertisingManager1", "UnregisterAdvertisement", self.adv_path),
            ("org.bluez.GattManager1", "UnregisterApplication", self.app_path),
        ):
            try:
                await asyncio.wait_for(self._call_on(bus, interface, member, "o", [path]), 2)
            except (DBusError, TimeoutError, OSError):
                pass
        bus.disconnect()

    async def __aenter__(self) -> "BlePeripheral":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _rotate(self, period: float) -> None:
        for n in itertools.count(1):
            await asyncio.sleep(period)
            self._advertisement.set_data(bytes([n & 0xFF]))

    async def _call(self, interface: str, member: str, signature: str, body: list[Any]) -> None:
        assert self._bus is not None
        await self._call_on(self._bus, interface, member, signature, body)

    async def _call_on(
        self, bus: MessageBus, interface: str, member: str, signature: str, body: list[Any]
    ) -> None:
        reply = await bus.call(
            Message(
                destination=BLUEZ,
                path=self.adapter_path,
                interface=interface,
                member=member,
                signature=signature,
                body=body,
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            name = reply.error_name if reply is not None else "no reply"
            text = reply.body[0] if reply is not None and reply.body else ""
            raise DBusError(name or "org.freedesktop.DBus.Error.Failed", f"{member}: {text}")
