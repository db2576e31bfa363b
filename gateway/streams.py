"""A device's streams and its owner's choices (docs/protocol.md 12): each
value the device can send, what it tells and how sensitive it is (from the
board file and the features' manifests), whether it is shared, kept on the
device or off (as the device's hello says), and what keeping it back costs.

The device enforces the choices (firmware/pb/streams.py): what is not
shared never leaves it. The gateway only shows them, sends the owner's
changes (`streams.set`) and, should a device send what its hello says it
withholds, does not store it (service.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from firmware.pb.streams import CHOICES

# The runtime's own messages (firmware/pb/streams.py NEEDED): what the
# gateway needs to operate the device, never withheld
NEEDED: dict[str, str] = {
    "state": "Whether the device is online, and why it went offline (a reset, a lost link).",
    "hello": "What the device is and runs: its model, features, their versions and settings' errors.",
    "ota": "Update offers it takes, downloads, and how each update ended.",
    "events": "Resets, errors of features and sensors, and what the device refused.",
    "replies": "The device's answers to the gateway's commands (settings, status, these choices).",
}
# What the twin preview (docs/twin.md) fits a device's twin from, by model
TWIN_NEEDS: dict[str, tuple[str, ...]] = {
    "thermostat": ("sensors.temperature", "actuators.relay"),
    "shirt": ("sensors.humidity", "actuators.vent"),
}
# ... and what each gives it: what sharing the stream again would give the preview
TWIN_GIVES: dict[str, str] = {
    "sensors.temperature": "the room's temperature, the twin of the room is fitted to it",
    "actuators.relay": "when the heater ran, from which the twin learns how fast it warms the room",
    "sensors.humidity": "the skin's humidity, the twin of the skin under the shirt is fitted to it",
    "actuators.vent": "how far the vent opened, from which the twin learns how it dries the skin",
}
UNDESCRIBED = "Not described by its maker."


@dataclass(frozen=True)
class Stream:
    path: str  # sensors.<name>, actuators.<name>, features.<feature>.<field>, or a runtime message
    kind: str  # sensor, actuator, feature or runtime
    doc: str
    sensitivity: str  # low, personal, sensitive
    default: str  # share or local: a device's choice when provisioned
    operational: bool  # the maker's: the fleet's health is judged by it
    feature: str | None = None

    @property
    def needed(self) -> bool:
        return self.kind == "runtime"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"needed": self.needed}


def _described(path: str, kind: str, d: Any, feature: str | None = None) -> Stream:
    d = d if isinstance(d, Mapping) else {}
    return Stream(
        path,
        kind,
        str(d.get("doc") or UNDESCRIBED),
        str(d.get("sensitivity") or "personal"),
        "local" if d.get("share") == "local" else "share",
        d.get("operational") is True,
        feature,
    )


def _mapping(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def catalogue(board: Mapping[str, Any], manifests: Mapping[str, Mapping[str, Any]]) -> list[Stream]:
    """Every stream of a device of `board` running the features of
    `manifests` (name -> manifest): the runtime's, the board's sensors and
    actuators and those of the add-ons it may be given, each feature's
    published fields."""
    out = [Stream(p, "runtime", doc, "low", "share", True) for p, doc in NEEDED.items()]
    described = _mapping(board.get("streams"))
    caps = _mapping(board.get("capabilities"))
    addons = _mapping(board.get("addons"))  # (plugged in or not: docs/protocol.md 13)
    every = {**{n: _mapping(c) for n, c in addons.items()}, **{n: _mapping(c) for n, c in caps.items()}}
    for name in sorted(every):
        kind = "sensor" if every[name].get("kind") == "sensor" else "actuator"
        path = f"{kind}s.{name}"
        out.append(_described(path, kind, described.get(path)))
    for feature in sorted(manifests):
        m = manifests[feature]
        streams, perms = _mapping(m.get("streams")), _mapping(m.get("permissions"))
        for field in perms.get("publishes") or ():
            if isinstance(field, str):
                out.append(_described(f"features.{feature}.{field}", "feature", streams.get(field), feature))
    return out


def defaults(streams: Iterable[Stream]) -> dict[str, str]:
    """The choices a device is provisioned with: each stream's default."""
    return {s.path: s.default for s in streams if not s.needed}


class ChoiceError(ValueError):
    """Choices that cannot be made; the message says which and why."""


def check_choices(streams: Iterable[Stream], asked: Any) -> dict[str, str]:
    """The owner's asked choices (path -> share|local|off), checked against
    the device's streams as the device checks them. Raises ChoiceError."""
    by_path = {s.path: s for s in streams}
    if not isinstance(asked, dict) or not asked:
        raise ChoiceError("streams must be a non-empty object of stream: share, local or off")
    for path, choice in asked.items():
        s = by_path.get(path)
        if s is None:
            known = ", ".join(p for p, x in by_path.items() if not x.needed)
            raise ChoiceError(f"no stream {str(path)[:64]!r} on this device (streams: {known})")
        if s.needed:
            raise ChoiceError(f"{path} is needed to operate the device; it is always shared")
        if choice not in CHOICES:
            raise ChoiceError(f"{path}: choice {str(choice)[:16]!r} is not one of share, local, off")
        if choice == "off" and s.kind == "actuator":
            raise ChoiceError(f"{path} cannot be off: the device drives it; local keeps it on the device")
    return dict(asked)


def withheld(hello: Mapping[str, Any]) -> dict[str, str]:
    """What a device's hello says it keeps back: path -> local|off."""
    s = hello.get("streams")
    if not isinstance(s, Mapping):
        return {}
    return {str(p): c for p, c in s.items() if c in ("local", "off")}


def twin_withheld(model: str, held: Mapping[str, str]) -> list[dict[str, str]]:
    """The streams a `model`'s twin is fitted from that the device keeps back
    (held: withheld()), each with the owner's choice and what sharing it
    would give the preview; none: the twin has what it needs."""
    return [
        {"stream": p, "choice": held[p], "gives": TWIN_GIVES.get(p, "what the twin is fitted from")}
        for p in TWIN_NEEDS.get(model, ())
        if p in held
    ]


def costs(
    stream: Stream, model: str, metric_fields: Mapping[str, list[str]], readers: Mapping[str, list[str]]
) -> dict[str, list[str]]:
    """What keeping a stream back costs: when local (not shared) and when off."""
    local: list[str] = []
    if stream.path in TWIN_NEEDS.get(model, ()):
        local.append("no twin preview of updates: the twin is fitted from it")
    for metric in metric_fields.get(stream.path, []):
        local.append(f"left out of the health judgement of rollouts (metric {metric})")
    off = list(local)
    for feature in readers.get(stream.path, []):
        off.append(f"{feature} cannot work: it reads it")
    return {"local": local, "off": off if stream.kind in ("sensor", "feature") else []}


def metric_fields(manifests: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Stream path -> the rollout metrics of these features computed from it."""
    from .metrics import declared

    out: dict[str, list[str]] = {}
    try:
        decls = declared(manifests)
    except Exception:  # noqa: BLE001 - a set whose metrics do not parse judges by none of them
        return out
    for d in decls:
        for path in d.fields + tuple(p for p, _ in d.when):
            out.setdefault(path, []).append(d.key)
    return out


def readers(manifests: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """sensors.<name> -> the features that read it."""
    out: dict[str, list[str]] = {}
    for feature in sorted(manifests):
        perms = manifests[feature].get("permissions") or {}
        for s in perms.get("reads") or ():
            out.setdefault(f"sensors.{s}", []).append(feature)
    return out
