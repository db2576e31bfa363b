# ESP32 backend: sensors and actuators on real pins, Wi-Fi, watchdog.
# Hardware modules are imported inside methods, so this file also imports
# on CPython (type checks) and on the unix port.
from ..compat import const, sleep_ms, ticks_diff, ticks_ms
from ..errors import HalError
from . import RELAY, SERVO, Hal

_EPOCH = const(946684800)  # 2000-01-01 in Unix time: the board's time.time() counts from it

_CAUSES = {
    "PWRON_RESET": "power_on",
    "HARD_RESET": "hard",
    "WDT_RESET": "watchdog",
    "DEEPSLEEP_RESET": "deepsleep",
    "SOFT_RESET": "soft",
}


class Esp32Hal(Hal):
    ntp = True  # its clock starts at 2000: asks config.json's "ntp" (pb/startup.py)
    name = "esp32"

    def __init__(self, board, root="/", path=None):
        super().__init__(board, root, path)
        self._drivers = {}
        self._wdt = None
        self._wlan = None

    # ---- sensors -----------------------------------------------------------

    def _driver(self, name):
        drv = self._drivers.get(name)
        if drv is not None:
            return drv
        cap = self.caps.get(name)
        if cap is None:
            raise HalError("no capability %r on this board" % name)
        kind = cap.get("driver", cap.get("kind"))
        import machine

        if kind in ("dht22", "dht11"):
            # one DHT serves temperature and humidity: share it by pin
            key = "dht:%d" % cap["pin"]
            drv = self._drivers.get(key)
            if drv is None:
                import dht

                cls = dht.DHT22 if kind == "dht22" else dht.DHT11
                drv = _Dht(cls(machine.Pin(cap["pin"])))
                self._drivers[key] = drv
        elif kind == "sht31":
            drv = _Sht31(self._i2c(cap), cap.get("addr", 0x44))
        elif kind == "scd4x":
            drv = _Scd4x(self._i2c(cap), cap.get("addr", 0x62))
        elif kind == "pca9685":
            drv = _Pca9685(self._i2c(cap), cap.get("addr", 0x40), cap.get("channel", 0), cap.get("freq", 50))
        elif kind == "adc":
            drv = _Adc(machine.ADC(machine.Pin(cap["pin"])), cap.get("scale", 1.0), cap.get("offset", 0.0))
        elif kind == "battery":
            adc = machine.ADC(machine.Pin(cap["pin"]))
            adc.atten(machine.ADC.ATTN_11DB)  # the divided cell voltage reaches about 2.1 V
            drv = _Battery(adc, cap.get("divider", 2.0), cap.get("empty_v", 3.3), cap.get("full_v", 4.2))
        elif kind == RELAY:
            drv = machine.Pin(cap["pin"], machine.Pin.OUT)
        elif kind == SERVO:
            drv = machine.PWM(machine.Pin(cap["pin"]), freq=cap.get("freq", 50))
        else:
            raise HalError("no driver %r for %s" % (kind, name))
        self._drivers[name] = drv
        return drv

    def _i2c(self, cap):
        """The I2C bus on the capability's pins, one object a pair of pins."""
        import machine

        key = "i2c:%d:%d" % (cap["scl"], cap["sda"])
        bus = self._drivers.get(key)
        if bus is None:
            bus = machine.I2C(0, scl=machine.Pin(cap["scl"]), sda=machine.Pin(cap["sda"]))
            self._drivers[key] = bus
        return bus

    def scan(self):
        """The add-ons answering at their address on their I2C bus."""
        found = []
        seen = {}
        for name in self.addons:
            _, scl, sda, addr = self.addons[name]
            if addr is None or scl is None or sda is None:
                continue
            key = (scl, sda)
            if key not in seen:
                try:
                    seen[key] = self._i2c({"scl": scl, "sda": sda}).scan()
                except OSError:
                    return None  # (a bus glitch: nothing known changed, the next look tries again)
            if addr in seen[key]:
                found.append(name)
            else:
                self._drivers.pop(name, None)  # (started afresh when plugged in again)
        return found

    def read(self, name):
        cap = self.caps.get(name, {})
        if cap.get("kind") != "sensor":
            raise HalError("no sensor %r on this board" % name)
        try:
            value = self._driver(name).read(cap.get("quantity", name))
        except OSError as exc:
            raise HalError("sensor %s: %s" % (name, exc)) from exc
        return self.check_reading(name, value)

    def write(self, name, value):
        value = self.check_value(name, value)
        cap = self.caps[name]
        drv = self._driver(name)
        if cap["kind"] == RELAY:
            drv.value(1 if value == cap.get("active_high", True) else 0)
        else:
            lo = cap.get("min_us", 500)
            hi = cap.get("max_us", 2500)
            if cap.get("driver") == "pca9685":
                drv.pulse_us(lo + (hi - lo) * value / 100)
            else:
                drv.duty_ns(int((lo + (hi - lo) * value / 100) * 1000))

    # ---- system ------------------------------------------------------------

    def reset_cause(self):
        import machine

        c = machine.reset_cause()
        for attr in _CAUSES:
            if getattr(machine, attr, None) == c:
                return _CAUSES[attr]
        return "unknown"

    def reset(self, cause="soft"):
        import machine

        self.safe_state()
        machine.reset()

    def set_repl(self, is_open):
        # Ctrl-C no longer breaks into the running program, so neither
        # mpremote nor a serial monitor reaches the REPL (main.py never
        # returns to it: it resets); a terminal duplicated onto another
        # stream (a WebREPL) is detached too
        import os

        import micropython

        micropython.kbd_intr(3 if is_open else -1)
        if not is_open and hasattr(os, "dupterm"):
            try:
                os.dupterm(None, 0)
            except (OSError, ValueError):
                pass

    def feed_watchdog(self):
        if self._wdt is None:
            import machine

            self._wdt = machine.WDT(timeout=self.board.get("watchdog_ms", 30000))
        self._wdt.feed()

    def partition(self):
        # MicroPython built with an OTA partition table (ota_0, ota_1)
        import esp32

        try:
            # (the stubs take only a label; the firmware takes RUNNING and BOOT too)
            esp32.Partition(esp32.Partition.RUNNING).get_next_update()  # type: ignore[arg-type]
        except OSError:
            return None  # a table with one app partition: no image updates
        return esp32.Partition

    def uart(self, link):
        """The UART config.json's link names ({"serial": "uart2", "baud": N,
        "tx": PIN, "rx": PIN}) as the line's stream. Raises HalError."""
        try:
            n = int(link["serial"][4:])
            tx, rx = link["tx"], link["rx"]
        except (ValueError, KeyError):
            raise HalError("a UART line needs uartN, tx and rx in config.json's link") from None
        import machine

        # reads return what has come (timeout 0), and the receive buffer
        # holds a whole frame (4410 bytes) while the event loop is busy
        return machine.UART(n, baudrate=link.get("baud", 115200), tx=tx, rx=rx, timeout=0, rxbuf=4608)

    def radio(self, config):
        from ..net.ble_radio import Radio

        return Radio(config["device"])

    async def network_up(self, config):
        """Join the configured Wi-Fi; waits at most 20 s. Raises HalError."""
        if "link" in config:
            return  # (a device on a serial line needs no Wi-Fi)
        import network

        wifi = config.get("wifi") or {}
        if not wifi.get("ssid"):
            raise HalError("no Wi-Fi configured (config.json 'wifi')")
        if self._wlan is None:
            self._wlan = network.WLAN(network.STA_IF)
            self._wlan.active(True)
        if self._wlan.isconnected():
            return
        self._wlan.connect(wifi["ssid"], wifi.get("password", ""))
        t0 = ticks_ms()
        while not self._wlan.isconnected():
            if ticks_diff(ticks_ms(), t0) > 20000:
                raise HalError("Wi-Fi %r did not connect in 20 s" % wifi["ssid"])
            self.feed_watchdog()
            await sleep_ms(200)

    def set_time(self, t):
        import time

        import machine

        tm = time.gmtime(int(t) - (0 if time.gmtime(0)[0] == 1970 else _EPOCH))
        # RTC.datetime: (year, month, day, weekday, hours, minutes, seconds, subseconds)
        machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], 0))


class _Dht:
    def __init__(self, dev):
        self.dev = dev
        self.at = None

    def read(self, quantity):
        # a DHT must not be measured more than once every 2 s
        if self.at is None or ticks_diff(ticks_ms(), self.at) > 2000:
            self.dev.measure()
            self.at = ticks_ms()
        return self.dev.humidity() if quantity == "humidity" else self.dev.temperature()


class _Sht31:
    def __init__(self, i2c, addr):
        self.i2c = i2c
        self.addr = addr

    def read(self, quantity):
        import time

        self.i2c.writeto(self.addr, b"\x24\x00")  # single shot, high repeatability
        time.sleep_ms(16)
        d = self.i2c.readfrom(self.addr, 6)
        if quantity == "humidity":
            return 100 * ((d[3] << 8) | d[4]) / 65535
        return -45 + 175 * ((d[0] << 8) | d[1]) / 65535


class _Scd4x:
    """Sensirion SCD40/41 CO2 sensor: periodic measurement, one reading
    every 5 s; words are big-endian, each followed by a CRC byte."""

    def __init__(self, i2c, addr):
        self.i2c = i2c
        self.addr = addr
        self.co2 = None
        import time

        # after a reset it may still be measuring, powered all along, and
        # refuses a start then: stop first (it takes 500 ms)
        try:
            i2c.writeto(addr, b"\x3f\x86")  # stop_periodic_measurement
            time.sleep_ms(500)
        except OSError:
            pass
        i2c.writeto(addr, b"\x21\xb1")  # start_periodic_measurement

    def read(self, quantity):
        import time

        self.i2c.writeto(self.addr, b"\xe4\xb8")  # get_data_ready_status
        time.sleep_ms(1)
        r = self.i2c.readfrom(self.addr, 3)
        if ((r[0] << 8) | r[1]) & 0x07FF:
            self.i2c.writeto(self.addr, b"\xec\x05")  # read_measurement
            time.sleep_ms(1)
            d = self.i2c.readfrom(self.addr, 9)
            self.co2 = (d[0] << 8) | d[1]
        if self.co2 is None:
            raise OSError("no CO2 reading yet")
        return self.co2


class _Pca9685:
    """NXP PCA9685 PWM driver: one channel drives a servo."""

    def __init__(self, i2c, addr, channel, freq):
        import time

        self.i2c = i2c
        self.addr = addr
        self.channel = channel
        self.freq = freq
        prescale = int(25000000 / (4096 * freq) + 0.5) - 1
        i2c.writeto_mem(addr, 0x00, b"\x10")  # MODE1: sleep, to set the prescaler
        i2c.writeto_mem(addr, 0xFE, bytes([prescale]))
        i2c.writeto_mem(addr, 0x00, b"\x20")  # awake, register auto-increment
        time.sleep_ms(1)

    def pulse_us(self, us):
        off = int(us * self.freq * 4096 / 1000000)
        reg = 0x06 + 4 * self.channel  # LEDn_ON_L, ON_H, OFF_L, OFF_H
        self.i2c.writeto_mem(self.addr, reg, bytes([0, 0, off & 0xFF, off >> 8]))


class _Adc:
    def __init__(self, adc, scale, offset):
        self.adc = adc
        self.scale = scale
        self.offset = offset

    def read(self, quantity):
        return self.adc.read_uv() / 1e6 * self.scale + self.offset


class _Battery:
    """A cell's charge, in %, from its voltage: an ADC pin behind a divider
    (the cell's voltage is `divider` times the pin's), mapped linearly from
    empty_v (0 %) to full_v (100 %) and held within 0-100 (a cell on its
    charger reads above full_v). Eight samples are averaged: the servo's
    current makes single readings jump."""

    def __init__(self, adc, divider, empty_v, full_v):
        self.adc = adc
        self.divider = divider
        self.empty_v = empty_v
        self.full_v = full_v

    def read(self, quantity):
        uv = 0
        for _ in range(8):
            uv += self.adc.read_uv()
        v = uv / 8e6 * self.divider
        pct = (v - self.empty_v) * 100 / (self.full_v - self.empty_v)
        return 0.0 if pct < 0 else 100.0 if pct > 100 else pct
