"""Home Assistant's view of a linked device (docs/protocol.md 14): the MQTT
discovery configs of its entities, the bridge's state messages, and the
commands Home Assistant may send back, checked before anything reaches a
device.

Pure: no sockets, no clock, no store. gateway/ha_bridge.py publishes what
this module makes and acts on what it accepts. A stream the owner keeps
back (docs/protocol.md 12) gives no entity and no state.

Topics: discovery under `homeassistant/<component>/pb_<device>/<key>/config`
(Home Assistant's default prefix); the bridge's own under `pbha/<device>/`:
one retained state topic per value, `availability`, `update`, and the
commands Home Assistant writes, `pbha/<device>/set/<command>`. Home
Assistant's broker account reads both trees and writes only the commands
(gateway/broker.py); the gateway turns a command into a device's command.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from firmware.pb.ids import valid_id

from .numbers import finite_number

DISCOVERY = "homeassistant"  # Home Assistant's discovery prefix
BRIDGE = "pbha"  # the bridge's own topics
COMMAND_FILTER = f"{BRIDGE}/+/set/+"  # what the gateway subscribes to, and all Home Assistant may write
COMMANDS = ("setpoint", "mode", "install")
INSTALL = "install"  # the update entity's payload_install
MAX_COMMAND = 64  # bytes of a command's payload
ONLINE, OFFLINE = "online", "offline"
# the thermostat's modes Home Assistant knows by the same name
HVAC_MODES = ("heat", "off")
_SETPOINT_RANGE = (5.0, 30.0)  # the thermostat's config schema, for a device whose manifest is not known


def topic(dev: str, name: str) -> str:
    """A bridge topic of dev: `pbha/<dev>/<name>`."""
    return f"{BRIDGE}/{dev}/{name}"


def command_topic(dev: str, command: str) -> str:
    return topic(dev, f"set/{command}")


def node(dev: str) -> str:
    """The discovery node id of dev (Home Assistant's ids are [a-zA-Z0-9_-])."""
    return f"pb_{dev}"


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity of a device: its component, its key (the
    discovery object id), the streams it shows (all shared, or no entity),
    and the state topics it reads."""

    component: str
    key: str
    name: str
    streams: tuple[str, ...]

    def config_topic(self, dev: str) -> str:
        return f"{DISCOVERY}/{self.component}/{node(dev)}/{self.key}/config"


# each model's entities; each value's state topic is pbha/<dev>/<value>
TEMPERATURE = Entity("sensor", "temperature", "Room temperature", ("sensors.temperature",))
HUMIDITY = Entity("sensor", "humidity", "Room humidity", ("sensors.humidity",))
CLIMATE = Entity(
    "climate", "thermostat", "Thermostat", ("features.thermostat.setpoint", "features.thermostat.mode")
)
VENT = Entity("sensor", "vent", "Vent opening", ("features.vent.opening",))
UPDATE = Entity("update", "firmware", "Firmware", ())  # (updates are needed: never withheld)
ENTITIES: dict[str, tuple[Entity, ...]] = {
    "thermostat": (TEMPERATURE, HUMIDITY, CLIMATE, UPDATE),
    "shirt": (VENT, UPDATE),
}
# value -> the stream it comes from, and where in a telemetry message it is
VALUES: dict[str, tuple[str, tuple[str, ...]]] = {
    "temperature": ("sensors.temperature", ("sensors", "temperature")),
    "humidity": ("sensors.humidity", ("sensors", "humidity")),
    "setpoint": ("features.thermostat.setpoint", ("features", "thermostat", "setpoint")),
    "mode": ("features.thermostat.mode", ("features", "thermostat", "mode")),
    "action": ("features.thermostat.heating", ("features", "thermostat", "heating")),
    "opening": ("features.vent.opening", ("features", "vent", "opening")),
}
# the state topics of a device the bridge may have written (cleared at an unlink)
STATE_NAMES = (*VALUES, "availability", "update")
# what must be installed for an entity: the feature whose fields it shows
_FEATURE = {"thermostat": "thermostat", "vent": "vent"}
_CAPABILITY = {"temperature": "temperature", "humidity": "humidity"}


def all_config_topics(dev: str) -> list[str]:
    """Every discovery topic the bridge may have written for dev, of any model."""
    return sorted({e.config_topic(dev) for es in ENTITIES.values() for e in es})


def entities(model: str | None, hello: Mapping[str, Any], withheld: Mapping[str, str]) -> list[Entity]:
    """The entities of a device as its hello describes it: those of its
    model whose feature or sensor it has, and whose streams it shares."""
    features = hello.get("features")
    features = features if isinstance(features, Mapping) else {}
    caps = hello.get("caps")
    caps = [c for c in caps if isinstance(c, str)] if isinstance(caps, list) else []
    out = []
    for e in ENTITIES.get(model or "", ()):
        if e.key in _FEATURE and _FEATURE[e.key] not in features:
            continue
        if e.key in _CAPABILITY and _CAPABILITY[e.key] not in caps:
            continue
        if any(s in withheld for s in e.streams):
            continue
        out.append(e)
    return out


def setpoint_range(manifest: Mapping[str, Any] | None) -> tuple[float, float]:
    """The setpoint's (min, max) from the thermostat feature's config schema."""
    config = manifest.get("config") if isinstance(manifest, Mapping) else None
    spec = config.get("setpoint") if isinstance(config, Mapping) else None
    lo, hi = _SETPOINT_RANGE
    if isinstance(spec, Mapping):
        lo = _number(spec.get("min"), lo)
        hi = _number(spec.get("max"), hi)
    return lo, hi


def _number(v: Any, default: float) -> float:
    return float(v) if finite_number(v) else default


def discovery(
    e: Entity,
    dev: str,
    model: str,
    runtime: str | None,
    withheld: Mapping[str, str],
    setpoints: tuple[float, float] = _SETPOINT_RANGE,
) -> dict[str, Any]:
    """The discovery config of entity e of dev."""
    config: dict[str, Any] = {
        "name": e.name,
        "unique_id": f"permabeta_{dev}_{e.key}",
        "object_id": f"{dev}_{e.key}".replace("-", "_"),
        "availability_topic": topic(dev, "availability"),
        "device": {
            "identifiers": [f"permabeta_{dev}"],
            "name": dev,
            "manufacturer": "permabeta",
            "model": model,
            **({"sw_version": runtime} if runtime else {}),
        },
        "origin": {"name": "permabeta"},
    }
    if e is TEMPERATURE or e is HUMIDITY:
        config |= {
            "state_topic": topic(dev, e.key),
            "device_class": e.key,
            "state_class": "measurement",
            "unit_of_measurement": "°C" if e is TEMPERATURE else "%",
        }
    elif e is VENT:
        config |= {
            "state_topic": topic(dev, "opening"),
            "state_class": "measurement",
            "unit_of_measurement": "%",
            "icon": "mdi:air-filter",
        }
    elif e is CLIMATE:
        lo, hi = setpoints
        config |= {
            "modes": list(HVAC_MODES),
            "mode_state_topic": topic(dev, "mode"),
            "mode_command_topic": command_topic(dev, "mode"),
            "temperature_state_topic": topic(dev, "setpoint"),
            "temperature_command_topic": command_topic(dev, "setpoint"),
            "min_temp": lo,
            "max_temp": hi,
            "temp_step": 0.5,
            "precision": 0.1,
            "temperature_unit": "C",
        }
        if "sensors.temperature" not in withheld:
            config["current_temperature_topic"] = topic(dev, "temperature")
        if "features.thermostat.heating" not in withheld:
            config["action_topic"] = topic(dev, "action")
    elif e is UPDATE:
        config |= {
            "state_topic": topic(dev, "update"),
            "command_topic": command_topic(dev, "install"),
            "payload_install": INSTALL,
            "device_class": "firmware",
            "title": f"permabeta {model}",
        }
    return config


def _at(msg: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = msg
    for part in path:
        if not isinstance(v, Mapping):
            return None
        v = v.get(part)
    return v


def state_values(msg: Mapping[str, Any], withheld: Mapping[str, str]) -> dict[str, str]:
    """The state topics' payloads (value name -> text) of one telemetry
    message: what it carries of the values the bridge shows, each of a
    shared stream, of the type the entity reads; nothing else."""
    out: dict[str, str] = {}
    for name, (stream, path) in VALUES.items():
        if stream in withheld:
            continue
        v = _at(msg, path)
        if name == "mode":
            if v in HVAC_MODES:
                out[name] = str(v)
        elif name == "action":
            if isinstance(v, bool) and "features.thermostat.mode" not in withheld:
                off = _at(msg, VALUES["mode"][1]) == "off"
                out[name] = "off" if off else "heating" if v else "idle"
        elif finite_number(v):
            out[name] = f"{float(v):g}"
    return out


def update_state(installed: str, latest: str | None) -> bytes:
    """The update entity's state: the installed release's version and the
    one that waits for the owner's say (the installed one when none waits)."""
    return _json({"installed_version": installed, "latest_version": latest or installed})


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def config_payload(config: Mapping[str, Any]) -> bytes:
    return _json(config)


# ---- commands from Home Assistant --------------------------------------------------


class CommandError(ValueError):
    """A bridge command that is refused; the message says why."""


@dataclass(frozen=True)
class Command:
    """A checked bridge command: its device, what it asks and its value."""

    dev: str
    command: str  # setpoint, mode, install
    value: float | str


def parse_command(topic_name: str, payload: bytes) -> Command:
    """A bridge command's topic and payload, checked for its shape (the
    device's limits, whether it is linked, are the bridge's to check).
    Raises CommandError."""
    parts = topic_name.split("/")
    if len(parts) != 4 or parts[0] != BRIDGE or parts[2] != "set":
        raise CommandError(f"not a bridge command topic: {topic_name[:80]!r}")
    dev, command = parts[1], parts[3]
    if not valid_id(dev):
        raise CommandError(f"not a device id: {dev[:40]!r}")
    if command not in COMMANDS:
        raise CommandError(f"no command {command[:20]!r} (known: {', '.join(COMMANDS)})")
    if len(payload) > MAX_COMMAND:
        raise CommandError(f"{command} of {len(payload)} bytes: at most {MAX_COMMAND}")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError(f"{command} is not UTF-8") from None
    if command == "setpoint":
        try:
            value = float(text)
        except ValueError:
            raise CommandError(f"setpoint {text[:20]!r} is not a number") from None
        if not math.isfinite(value):
            raise CommandError(f"setpoint {text[:20]!r} is not a number")
        return Command(dev, command, value)
    if command == "mode":
        if text not in HVAC_MODES:
            raise CommandError(f"mode {text[:20]!r} is not one of {', '.join(HVAC_MODES)}")
        return Command(dev, command, text)
    if text != INSTALL:
        raise CommandError(f"install's payload is {INSTALL!r}, not {text[:20]!r}")
    return Command(dev, command, text)


def checked_setpoint(value: float, limits: tuple[float, float]) -> float:
    """A setpoint within the thermostat's limits, to a tenth of a degree.
    Raises CommandError for one outside them."""
    lo, hi = limits
    if not lo <= value <= hi:
        raise CommandError(f"setpoint {value:g} is outside {lo:g}-{hi:g}")
    return round(value, 1)
