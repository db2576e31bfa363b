"""docs/protocol.md is normative: every tagged example in it is checked here
against the implementation, and every message kind and command op of the code
must be documented with an example, so the spec cannot fall behind the code.

Tags (the fence's info string): ``json <kind>``, ``json invalid-<kind> <code>``,
``json cmd`` directly followed by ``json reply`` (run on a real Device),
``json manifest``, ``json invalid-manifest``, ``json accept <topic>``,
``json reject[-retained] <topic> <reason>``, ``json ignore <topic>``,
``text acl``, ``text deadline``, ``text cli``, ``text usage``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import itertools
import json
import re
import shlex
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from firmware.pb import commands, runtime
from firmware.pb import features as pb_features
from firmware.pb import manifest as pb_manifest
from firmware.pb import values as pb_values
from firmware.pb.errors import FeatureError, ProtocolError
from firmware.pb.hal.host import HostHal
from firmware.pb.net import mqtt, wire, wire_in
from firmware.pb.net.mqtt_client import MQTTClient
from firmware.pb.ota.updates import Boot
from firmware.pb.peer import mqtt_broker as mqtt_peer
from firmware.pb.peer import protocol as proto
from firmware.pb.runtime import Device
from firmware.pb.store import Store
from gateway import api as gw_api
from gateway import archive as gw_archive
from gateway import ingest
from gateway import service as gw_service
from gateway.broker import BrokerUrl, acl_text
from gateway.cli import build_parser, parse_command
from gateway.provision import board_for, make_config

from .markdown import DOCS, ROOT, Example, code_names, parse_examples, section, string_args, table

DOC = DOCS / "protocol.md"
FEATURES = ROOT / "firmware" / "features"
PB = ROOT / "firmware" / "pb"

# ---- the document ----------------------------------------------------------

TEXT = DOC.read_text(encoding="utf-8")
EXAMPLES = parse_examples(TEXT)
KINDS = tuple(proto._SCHEMAS)

VALID = [e for e in EXAMPLES if e.lang == "json" and e.tag in KINDS]
INVALID = [e for e in EXAMPLES if e.lang == "json" and e.tag.startswith("invalid-") and e.tag[8:] in KINDS]
MANIFESTS = [e for e in EXAMPLES if e.tag == "manifest"]
INVALID_CMDS = [e for e in INVALID if e.tag == "invalid-cmd"]
BAD_MANIFESTS = [e for e in EXAMPLES if e.tag == "invalid-manifest"]
ACCEPTS = [e for e in EXAMPLES if e.tag == "accept"]
REJECTS = [e for e in EXAMPLES if e.tag in ("reject", "reject-retained")]
IGNORES = [e for e in EXAMPLES if e.tag in ("ignore", "ignore-retained")]
KNOWN_TAGS = {*KINDS, *(f"invalid-{k}" for k in KINDS), "manifest", "invalid-manifest", "accept"}
KNOWN_TAGS |= {"reject", "reject-retained", "ignore", "ignore-retained", "acl", "deadline", "cli", "usage"}
KNOWN_TAGS |= {"homeassistant-config", "homeassistant-update"}


def _pairs() -> list[tuple[Example, Example]]:
    """(command, reply): a cmd or invalid-cmd block directly followed by a reply block."""
    out = []
    for a, b in itertools.pairwise(EXAMPLES):
        if a.tag in ("cmd", "invalid-cmd") and b.tag == "reply":
            out.append((a, b))
    return out


PAIRS = _pairs()


def _ids(examples: list[Example]) -> list[str]:
    return [f"L{e.line}-{e.tag}" for e in examples]


def _one(tag: str, **fields: Any) -> Example:
    """The first example with this tag whose JSON has these field values."""
    for e in EXAMPLES:
        if e.tag == tag and all(e.value().get(k) == v for k, v in fields.items()):
            return e
    raise AssertionError(f"protocol.md has no ```json {tag} example with {fields}")


def _text_block(tag: str) -> Example:
    found = [e for e in EXAMPLES if e.lang == "text" and e.tag == tag]
    assert len(found) == 1, f"protocol.md needs exactly one ```text {tag} block"
    return found[0]


def _shape(v: Any) -> Any:
    """The JSON type structure of a value: objects by key, everything else by type."""
    if isinstance(v, dict):
        return {k: _shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return "array"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    assert v is None, v
    return "null"


# Result fields that depend on the run (time, memory, counters), compared by shape only.
_VOLATILE = {"uptime_s", "heap_free", "mqtt", "boot_count"}


def _comparable(result: Any) -> Any:
    if not isinstance(result, dict):
        return result
    return {k: _shape(v) if k in _VOLATILE else v for k, v in result.items()}


# The ProtocolError codes the protocol core raises: proto builds on wire and wire_in.
_CORE = (proto, wire, wire_in)


def _protocol_codes() -> set[str]:
    return set().union(*(string_args(m, "ProtocolError", 0) for m in _CORE))


# ---- a device without a network ---------------------------------------------


@dataclass(frozen=True)
class Published:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Rig:
    """A real Device (host HAL, Store, the thermostat feature) running the
    documented release (hello's `ota`); its MQTT client only queues, and
    every publish is recorded."""

    device: Device
    sent: list[Published]
    root: Path

    def topic(self, kind: str) -> str:
        return str(self.device.topic(kind))

    def on(self, kind: str) -> list[Published]:
        return [p for p in self.sent if p.topic == self.topic(kind)]

    def set_sensors(self, **values: float) -> None:
        (self.root / "hal" / "sensors.json").write_text(json.dumps(values))

    def command(self, payload: bytes, retain: bool = False) -> list[Published]:
        """Deliver a payload on the device's cmd topic the way the MQTT client
        does; what the device published in response."""
        start = len(self.sent)

        async def deliver() -> None:
            handler = self.device.client.on_message
            assert handler is not None
            handler(self.topic("cmd"), payload, retain)
            await asyncio.sleep(0)  # let a reboot's task start; asyncio.run cancels it

        asyncio.run(deliver())
        return self.sent[start:]


def _import_feature(root: str, name: str) -> ModuleType:
    # load from the file, so tests neither touch sys.path nor share modules
    spec = importlib.util.spec_from_file_location(f"_protocol_doc_{name}", f"{root}/{name}/__init__.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _documented_ota() -> dict[str, Any]:
    ota = _one("hello").value()["ota"]
    assert isinstance(ota, dict)
    return ota


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    def make(dev: str = "th-01", port: int = 1883, boot: bool = True) -> Rig:
        root = tmp_path / dev
        (root / "hal").mkdir(parents=True)
        shutil.copytree(
            FEATURES / "thermostat",
            root / "features" / "thermostat",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        board = board_for("thermostat")
        config = make_config(dev, board, BrokerUrl("127.0.0.1", port), "secret")
        ota = _documented_ota()
        pointer = {
            "set": "ota/a",
            "counter": ota["counter"],
            "manifest": ota["manifest"],
            "state": ota["state"],
        }
        device = Device(
            config,
            HostHal(board, str(root)),
            Store(str(root / "data")),
            str(root / "features"),
            importer=_import_feature,
            log=lambda _dev, _msg: None,
            boot=Boot(str(root / "features"), pointer, trusted=ota["root"]),
            base=str(root),
        )
        sent: list[Published] = []
        queue = device.client.publish

        def publish(topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
            data = payload.encode() if isinstance(payload, str) else bytes(payload)
            sent.append(Published(topic, data, qos, retain))
            return bool(queue(topic, payload, qos, retain))

        device.client.publish = publish
        r = Rig(device, sent, root)
        r.set_sensors(temperature=21.0, humidity=45.0)
        if boot:
            device.boot()
            device.sample()
        return r

    yield make


# ---- the document is complete and well-formed ------------------------------


def test_every_tagged_block_has_a_known_tag() -> None:
    unknown = [str(e) for e in EXAMPLES if e.tag not in KNOWN_TAGS]
    assert not unknown, f"tags the test does not check: {unknown}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_message_kind_has_a_valid_and_an_invalid_example(kind: str) -> None:
    assert any(e.tag == kind for e in VALID), f"no ```json {kind} example"
    assert any(e.tag == f"invalid-{kind}" for e in INVALID), f"no ```json invalid-{kind} <code> example"


@pytest.mark.parametrize("op", proto.OPS)
def test_every_op_has_a_request_and_reply_example(op: str) -> None:
    ops = {cmd.value()["op"] for cmd, _ in PAIRS if cmd.tag == "cmd"}
    assert op in ops, f"no ```json cmd example for {op} followed by its ```json reply"


def test_every_command_example_names_a_known_op() -> None:
    replies = {cmd.line: reply for cmd, reply in PAIRS}
    for e in (e for e in EXAMPLES if e.tag == "cmd"):
        op = e.value()["op"]
        reply = replies.get(e.line)
        code = reply.value().get("error", {}).get("code") if reply is not None else None
        deliberately_unknown = code == "unknown_op"
        assert op in proto.OPS or deliberately_unknown, f"{e}: op {op!r} is not in proto.OPS"


def test_protocol_error_table_lists_exactly_the_codes_the_core_raises() -> None:
    documented = {row[0].strip("`") for row in table(section(TEXT, "5.1"))}
    assert documented == _protocol_codes()


def test_reply_error_table_lists_every_code_the_device_replies_with() -> None:
    documented = {row[0].strip("`") for row in table(section(TEXT, "5.2"))}
    raised = string_args(commands, "BadArgs", 1) | string_args(commands, "reply_error", 2)
    raised.add(str(inspect.signature(commands.BadArgs).parameters["code"].default))
    assert raised <= documented, f"undocumented reply error codes: {raised - documented}"


def test_every_validation_code_has_an_invalid_example() -> None:
    shown = {e.params[0] for e in INVALID} | {e.params[1] for e in REJECTS}
    missing = _protocol_codes() - shown
    assert not missing, f"no invalid example for {missing}"


def test_every_gateway_rejection_reason_has_an_example() -> None:
    shown = {e.params[1] for e in REJECTS}
    for reason in (ingest.SPOOFED, ingest.UNKNOWN_DEVICE, ingest.RETAINED_COMMAND):
        assert reason in shown, f"no ```json reject <topic> {reason} example"


def test_every_event_kind_the_device_sends_is_documented() -> None:
    # the second table of 3.4 lists the kinds
    lines = section(TEXT, "3.4")
    start = next(i for i, line in enumerate(lines) if line.startswith("| kind | feature |"))
    rows = table(lines[start:])
    kinds = {row[0].strip("`") for row in rows}
    sent = set()
    for path in (PB / "runtime.py", PB / "commands.py", PB / "features.py"):
        sent |= string_args(path, "emit_event", 0)
    assert sent <= kinds, f"event kinds sent but not in the table of 3.4: {sent - kinds}"


def test_every_offline_reason_the_runtime_gives_is_documented() -> None:
    reasons = set()
    for path in PB.rglob("*.py"):
        reasons |= string_args(path, "stop", 0)
    reasons.add(str(inspect.signature(Device.stop).parameters["cause"].default))
    rows = {row[0].strip("`"): row[3] for row in table(section(TEXT, "3.2"))}
    documented = set(code_names(rows["reason"]))
    assert reasons <= documented, f"offline reasons not in 3.2: {reasons - documented}"


def _limit_sources() -> dict[str, Any]:
    client = inspect.signature(MQTTClient.__init__).parameters
    sources: dict[str, Any] = {
        "proto.MAX_MESSAGE": proto.MAX_MESSAGE,
        "proto.MAX_DEPTH": proto.MAX_DEPTH,
        "proto.MAX_ID": proto.MAX_ID,
        "proto.MAX_INT": proto.MAX_INT,
        "commands._RECENT_CMDS": commands._RECENT_CMDS,
        "features.MAX_FEATURES": pb_features.MAX_FEATURES,
        "values.MAX_STR": pb_values.MAX_STR,
        "values._MAX_LIST": pb_values._MAX_LIST,
        "features.MAX_DATA": pb_features.MAX_DATA,
        "runtime.MAX_PACKET": runtime.MAX_PACKET,
        "service._MAX_PENDING_STATES": gw_service._MAX_PENDING_STATES,
        "api.MAX_TIMEOUT_S": gw_api.MAX_TIMEOUT_S,
        "archive.MAX_ARCHIVE": gw_archive.MAX_ARCHIVE,
    }
    for name in (
        "queue_size",
        "max_inflight",
        "keepalive",
        "ack_timeout_ms",
        "connect_timeout_ms",
        "backoff_min_ms",
        "backoff_max_ms",
    ):
        sources[f"MQTTClient.{name}"] = client[name].default
    return sources


def test_limits_table_matches_the_code() -> None:
    sources = _limit_sources()
    rows = table(section(TEXT, "8. Limits"))
    documented = {row[2].strip("`"): float(row[1]) for row in rows}
    assert set(documented) == set(sources), "the limits table and the checked constants differ"
    for name, value in documented.items():
        assert value == sources[name], f"{name} is {sources[name]} in the code, {value} in protocol.md"


def test_the_runtime_gives_its_client_the_documented_packet_limit(rig: Callable[..., Rig]) -> None:
    client = rig().device.client
    assert client.max_packet == runtime.MAX_PACKET
    assert client.queue_size == inspect.signature(MQTTClient.__init__).parameters["queue_size"].default


# ---- messages ---------------------------------------------------------------


@pytest.mark.parametrize("example", VALID, ids=_ids(VALID))
def test_valid_example_decodes(example: Example) -> None:
    msg = proto.decode(example.tag, example.payload)
    assert proto.decode(example.tag, proto.encode(example.tag, msg)) == msg


@pytest.mark.parametrize("example", INVALID, ids=_ids(INVALID))
def test_invalid_example_is_refused_with_its_code(example: Example) -> None:
    assert len(example.params) == 1, f"{example}: name the expected error code after the kind"
    with pytest.raises(ProtocolError) as err:
        proto.decode(example.tag[len("invalid-") :], example.payload)
    assert err.value.code == example.params[0], f"{example}: {err.value.message}"


@pytest.mark.parametrize("example", INVALID_CMDS, ids=_ids(INVALID_CMDS))
def test_the_device_decodes_an_invalid_command_like_the_gateway(example: Example) -> None:
    with pytest.raises(ProtocolError) as err:
        wire_in.decode_cmd(example.payload)
    assert err.value.code == example.params[0], f"{example}: {err.value.message}"


VALID_CMDS = [e for e in VALID if e.tag == "cmd"]


@pytest.mark.parametrize("example", VALID_CMDS, ids=_ids(VALID_CMDS))
def test_the_device_decodes_a_valid_command_like_the_gateway(example: Example) -> None:
    assert wire_in.decode_cmd(example.payload) == proto.decode("cmd", example.payload)


def test_decode_refuses_more_than_max_message() -> None:
    msg = _one("event", kind="sensor_error").value()
    msg["message"] = "x" * proto.MAX_MESSAGE
    with pytest.raises(ProtocolError) as err:
        proto.decode("event", json.dumps(msg).encode())
    assert err.value.code == "too_large"


# ---- commands, executed on a real device ------------------------------------


@pytest.mark.parametrize("pair", PAIRS, ids=[f"L{c.line}-{c.tag}" for c, _ in PAIRS])
def test_command_example_runs_on_a_device_as_documented(
    pair: tuple[Example, Example], rig: Callable[..., Rig]
) -> None:
    cmd, doc_reply = pair
    expected = proto.decode("reply", doc_reply.payload)
    r = rig(expected["dev"])
    out = r.command(cmd.payload)
    replies = [p for p in out if p.topic == r.topic("reply")]
    assert len(replies) == 1, f"{cmd}: expected one reply, got {out}"
    assert (replies[0].qos, replies[0].retain) == (1, False)
    got = proto.decode("reply", replies[0].payload)
    assert got["id"] == expected["id"] == json.loads(cmd.body)["id"]
    assert got["dev"] == expected["dev"]
    assert got["ok"] == expected["ok"], f"{cmd}: the device answered {got}"
    if cmd.tag == "invalid-cmd":
        assert expected["error"]["code"] == cmd.params[0], f"{doc_reply} does not carry {cmd.params[0]}"
    if expected["ok"]:
        assert ("result" in got) == ("result" in expected)
        assert _comparable(got.get("result")) == _comparable(expected.get("result")), str(doc_reply)
    else:
        assert "result" not in got and "result" not in expected
        assert got["error"]["code"] == expected["error"]["code"], f"{cmd}: {got['error']}"


def test_duplicate_command_is_answered_again_and_not_run_twice(rig: Callable[..., Rig]) -> None:
    cmd = _one("cmd", op="data.set")
    args = cmd.value()["args"]
    r = rig()
    runs: list[Any] = []
    r.device.bus.on("data." + args["key"], runs.append, "doc-test")

    first = [p for p in r.command(cmd.payload) if p.topic == r.topic("reply")]
    again = [p for p in r.command(cmd.payload) if p.topic == r.topic("reply")]
    assert len(first) == len(again) == 1
    assert again[0].payload == first[0].payload
    assert runs == [args["value"]]

    # only the last _RECENT_CMDS ids are remembered
    for i in range(commands._RECENT_CMDS):
        r.command(json.dumps({"v": 1, "id": f"other-{i}", "op": "ping"}).encode())
    r.command(cmd.payload)
    assert runs == [args["value"], args["value"]]


@pytest.mark.parametrize("example", INVALID_CMDS, ids=_ids(INVALID_CMDS))
def test_invalid_command_gets_an_error_reply_or_a_bad_command_event(
    example: Example, rig: Callable[..., Rig]
) -> None:
    r = rig()
    out = r.command(example.payload)
    try:
        raw = json.loads(example.body)
    except ValueError:
        raw = None
    cmd_id = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(cmd_id, str) and proto.valid_id(cmd_id):
        (reply,) = out
        got = proto.decode("reply", reply.payload)
        assert (got["id"], got["ok"], got["error"]["code"]) == (cmd_id, False, example.params[0])
    else:
        (event,) = out
        assert event.topic == r.topic("event")
        assert proto.decode("event", event.payload)["kind"] == "bad_command"


def test_an_invalid_command_whose_id_is_no_device_id_gets_no_reply(rig: Callable[..., Rig]) -> None:
    # 4.10: only an id that is also a valid device id is answered
    r = rig()
    (event,) = r.command(json.dumps({"v": 1, "id": "C-1", "op": 5}).encode())
    assert event.topic == r.topic("event")
    assert proto.decode("event", event.payload)["kind"] == "bad_command"


def test_retained_command_is_ignored_by_the_device(rig: Callable[..., Rig]) -> None:
    r = rig()
    assert r.command(_one("cmd", op="ping").payload, retain=True) == []


def test_a_setting_the_running_feature_rejects_is_not_kept(rig: Callable[..., Rig]) -> None:
    # 4.4: the previous settings are kept and the reply is bad_config
    r = rig()
    feature = r.device.features.running["thermostat"]

    def refuse(key: str, value: Any) -> None:
        raise RuntimeError("cannot")

    feature.on_config = refuse
    before = r.device.features.config("thermostat")
    cmd = {"v": 1, "id": "c0ffee00000000ff", "op": "config.set"}
    cmd["args"] = {"feature": "thermostat", "values": {"setpoint": 22.5}}
    (reply,) = [p for p in r.command(json.dumps(cmd).encode()) if p.topic == r.topic("reply")]
    got = proto.decode("reply", reply.payload)
    assert got["ok"] is False and got["error"]["code"] == "bad_config"
    assert "kept the previous ones" in got["error"]["message"]
    assert r.device.features.config("thermostat") == before
    assert "thermostat" in r.device.features.running


# ---- what the runtime publishes matches the documented messages -------------


def test_last_will_is_the_documented_offline_state(rig: Callable[..., Rig]) -> None:
    r = rig()
    will = r.device.client.will
    assert will is not None
    topic, payload, qos, retain = will
    assert (topic, qos, retain) == (r.topic("state"), 1, True)
    assert proto.decode("state", payload) == _one("state", state="offline", reason="lost").value()


def test_birth_is_hello_online_state_and_the_last_update_status(rig: Callable[..., Rig]) -> None:
    r = rig()
    birth = r.device._birth()
    assert [(t, q, k) for t, _, q, k in birth] == [(r.topic("hello"), 1, True), (r.topic("state"), 1, True)]
    hello = proto.decode("hello", birth[0][1])
    documented = _one("hello").value()
    assert _shape(hello) == _shape(documented)
    assert hello["ota"] == documented["ota"]
    state = proto.decode("state", birth[1][1])
    assert _shape(state) == _shape(_one("state", state="online").value())
    # the update outcome kept on flash (read at boot) goes third
    status = b'{"v": 1, "id": "5f2a9c01b7e4", "state": "committed", "counter": 2, "dev": "th-01"}'
    (r.root / "ota").mkdir()
    (r.root / "ota" / "status.json").write_bytes(status)
    r.device.updates.start()
    birth = r.device._birth()
    assert [(t, q, k) for t, _, q, k in birth[2:]] == [(r.topic("ota/status"), 1, True)]
    assert birth[2][1] == status


def test_telemetry_has_the_documented_fields(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.device.publish_telemetry()
    (p,) = r.on("telemetry")
    assert (p.qos, p.retain) == (0, False)
    msg = proto.decode("telemetry", p.payload)
    assert _shape(msg) == _shape(_one("telemetry").value())
    assert msg["seq"] == 1


def test_a_failing_sensor_is_left_out_of_telemetry(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.set_sensors(temperature=99, humidity=45.0)
    r.device.sample()
    r.device.publish_telemetry()
    (p,) = r.on("telemetry")
    assert proto.decode("telemetry", p.payload)["sensors"] == {"humidity": 45.0}


def test_sensor_error_event_has_the_documented_fields(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.set_sensors(temperature=99, humidity=45.0)
    r.device.sample()
    r.device.sample()  # reported once per run of failures
    (p,) = r.on("event")
    assert (p.qos, p.retain) == (1, False)
    msg = proto.decode("event", p.payload)
    documented = _one("event", kind="sensor_error").value()
    assert _shape(msg) == _shape(documented)
    assert msg["message"] == documented["message"]


def test_qos_and_retain_table_matches_the_runtime(rig: Callable[..., Rig]) -> None:
    r = rig()
    seen = {t.rsplit("/", 1)[1]: (q, k) for t, _, q, k in r.device._birth()}
    r.device.publish_telemetry()
    r.set_sensors(temperature=99, humidity=45.0)
    r.device.sample()
    r.command(_one("cmd", op="ping").payload)
    seen |= {p.topic.rsplit("/", 1)[1]: (p.qos, p.retain) for p in r.sent}
    rows = [row for row in table(section(TEXT, "1.1")) if row[0].strip("`") in proto.UP]
    assert {row[0].strip("`") for row in rows} == set(proto.UP)
    for row in rows:
        kind = row[0].strip("`")
        assert seen[kind] == (int(row[3]), row[4] == "yes"), f"table 1.1 row {kind}"


# ---- on the wire, against a broker of the test's own ---------------------------------


@dataclass
class MiniBroker:
    """Just enough of an MQTT broker on loopback to watch one real client:
    answers CONNECT, SUBSCRIBE, QoS 1 PUBLISH and PINGREQ, records every
    packet, and can send the client a packet."""

    packets: list[tuple[Any, ...]] = field(default_factory=list)
    port: int = 0
    _writer: asyncio.StreamWriter | None = None
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._writer = w
        dec = mqtt_peer.decoder(1 << 16)
        with contextlib.suppress(ConnectionError):
            while data := await r.read(4096):
                for p in dec.feed(data):
                    self.packets.append(p)
                    if p[0] == mqtt.CONNECT:
                        w.write(mqtt_peer.connack(False, 0))
                    elif p[0] == mqtt.SUBSCRIBE:
                        w.write(mqtt_peer.suback(p[1], [q for _, q in p[2]]))
                    elif p[0] == mqtt.PUBLISH and p[3]:
                        w.write(mqtt.puback(p[6]))
                    elif p[0] == mqtt.PINGREQ:
                        w.write(mqtt_peer.pingresp())
                await w.drain()

    def send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    def published(self) -> list[tuple[Any, ...]]:
        return [p for p in self.packets if p[0] == mqtt.PUBLISH]

    async def wait(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)


def _nothing(r: Rig) -> None:
    return None


async def _on_the_wire(
    rig: Callable[..., Rig],
    test: Callable[[Rig, MiniBroker], Any],
    before: Callable[[Rig], Any] = _nothing,
) -> MiniBroker:
    """Run the whole device (Device.run) against a MiniBroker, then stop it;
    before(rig) runs first, while the device is still offline. The broker,
    with every packet it got."""
    broker = MiniBroker()
    await broker.start()
    r = rig(port=broker.port, boot=False)
    before(r)
    running = asyncio.create_task(r.device.run())
    try:
        await test(r, broker)
    finally:
        r.device.stop()
        async with asyncio.timeout(5):
            await running
        await broker.stop()
    return broker


async def test_on_the_wire_birth_comes_first_then_the_queue(rig: Callable[..., Rig]) -> None:
    def offline(r: Rig) -> None:
        (r.root / "ota").mkdir()
        (r.root / "ota" / "status.json").write_bytes(b'{"v":1,"id":"-","state":"failed","dev":"th-01"}')
        r.device.publish_telemetry()  # queued while offline
        r.device.emit_event("log", "thermostat", "queued while offline")

    async def check(r: Rig, broker: MiniBroker) -> None:
        await broker.wait(lambda: len(broker.published()) >= 5)
        topics = [p[1] for p in broker.published()]
        kinds = ["hello", "state", "ota/status", "telemetry", "event"]
        assert topics[:5] == [r.topic(k) for k in kinds]
        (sub,) = [p for p in broker.packets if p[0] == mqtt.SUBSCRIBE]
        assert sub[2] == [
            (r.topic("cmd"), 1),
            (r.topic("ota/offer"), 1),
            (r.topic("ota/chunk"), 0),
            (r.topic("ota/root"), 1),
            (r.topic("ota/time"), 1),
        ]

    await _on_the_wire(rig, check, offline)


async def test_on_the_wire_an_oversized_message_is_acknowledged_and_reported(rig: Callable[..., Rig]) -> None:
    documented = _one("event", kind="oversized").value()["message"]
    size = int(re.search(r"skipped a (\d+)-byte message", documented)[1])  # type: ignore[index]

    async def check(r: Rig, broker: MiniBroker) -> None:
        await broker.wait(lambda: len(broker.published()) >= 2)  # hello, state: the link is up
        topic = r.topic("cmd")
        payload = b"x" * (size - 2 - len(topic) - 2)
        broker.send(mqtt_peer.publish(topic, payload, 1, False, False, 77))

        def events() -> list[tuple[Any, ...]]:
            return [p for p in broker.published() if p[1] == r.topic("event")]

        await broker.wait(lambda: bool(events()))
        assert proto.decode("event", events()[0][2])["message"] == documented
        assert (mqtt.PUBACK, 77) in broker.packets
        assert r.device.client.stats["skipped"] == 1 and r.device.client.up

    await _on_the_wire(rig, check)


async def test_on_the_wire_a_clean_shutdown_says_offline_with_its_reason(rig: Callable[..., Rig]) -> None:
    async def up(r: Rig, broker: MiniBroker) -> None:
        await broker.wait(lambda: len(broker.published()) >= 2)

    broker = await _on_the_wire(rig, up)
    last = [p for p in broker.published() if p[1] == "pb/th-01/state"][-1]
    assert (last[3], last[4]) == (1, True)
    state = proto.decode("state", last[2])
    assert (state["state"], state["reason"]) == ("offline", "stop")
    assert _shape(state) == _shape(_one("state", state="offline", reason="reboot").value())
    assert broker.packets[-1] == (mqtt.DISCONNECT,)


# ---- features ----------------------------------------------------------------


@pytest.mark.parametrize("example", MANIFESTS, ids=_ids(MANIFESTS))
def test_manifest_example_is_valid(example: Example) -> None:
    pb_manifest.check_manifest(example.value())


def test_thermostat_manifest_example_is_the_shipped_manifest() -> None:
    shipped = json.loads((FEATURES / "thermostat" / "manifest.json").read_text())
    documented = [e.value() for e in MANIFESTS if e.value().get("name") == "thermostat"]
    assert documented == [shipped]


@pytest.mark.parametrize("example", BAD_MANIFESTS, ids=_ids(BAD_MANIFESTS))
def test_invalid_manifest_example_is_refused(example: Example) -> None:
    with pytest.raises(FeatureError):
        pb_manifest.check_manifest(example.value())


# ---- the gateway ---------------------------------------------------------------


def _known(dev: str) -> bool:
    return dev == "th-01"


def _judge(topic: str, payload: bytes, retain: bool) -> ingest.Accepted | ingest.Rejected | None:
    """As Gateway.handle: the update topics go to classify_ota."""
    judge = ingest.classify_ota if ingest.is_ota_topic(topic) else ingest.classify
    return judge(topic, payload, retain, _known)


@pytest.mark.parametrize("example", REJECTS, ids=_ids(REJECTS))
def test_gateway_rejects_example_with_its_reason(example: Example) -> None:
    topic, reason = example.params
    verdict = _judge(topic, example.payload, example.tag.endswith("-retained"))
    assert isinstance(verdict, ingest.Rejected), f"{example}: {verdict}"
    assert verdict.reason == reason, f"{example}: {verdict.detail}"


@pytest.mark.parametrize("example", IGNORES, ids=_ids(IGNORES))
def test_gateway_ignores_example(example: Example) -> None:
    (topic,) = example.params
    assert _judge(topic, example.payload, example.tag.endswith("-retained")) is None


@pytest.mark.parametrize("example", ACCEPTS, ids=_ids(ACCEPTS))
def test_gateway_accepts_example(example: Example) -> None:
    (topic,) = example.params
    verdict = _judge(topic, example.payload, False)
    assert isinstance(verdict, ingest.Accepted), f"{example}: {verdict}"


def test_gateway_accepts_every_valid_device_message() -> None:
    for e in VALID:
        if e.tag in proto.UP:
            msg = e.value()
            verdict = ingest.classify(proto.topic(msg["dev"], e.tag), e.payload, False, _known)
            assert isinstance(verdict, ingest.Accepted), f"{e}: {verdict}"


def test_the_gateway_routes_update_topics_to_classify_ota(tmp_path: Path) -> None:
    from gateway.store import Store as GatewayStore

    with GatewayStore(tmp_path / "gw.db") as store:
        gw = gw_service.Gateway(BrokerUrl("127.0.0.1", 1883), store, api=None)
        gw.handle("pb/th-01/hello", _one("hello").payload, True)
        for e in ACCEPTS + REJECTS + IGNORES:
            before = dict(gw.counters), dict(gw.rejects)
            gw.handle(e.params[0], e.payload, e.tag.endswith("-retained"))
            if e.tag == "accept":
                assert gw.counters["accepted"] == before[0]["accepted"] + 1, str(e)
            elif e.tag.startswith("ignore"):
                assert gw.counters["ignored"] == before[0]["ignored"] + 1, str(e)
            else:
                reason = e.params[1]
                assert gw.rejects.get(reason, 0) == before[1].get(reason, 0) + 1, str(e)


def test_gateway_rejects_deeply_nested_json_instead_of_raising() -> None:
    # CPython's json recurses: a RecursionError must become a rejection (section 6)
    verdict = ingest.classify("pb/th-01/telemetry", b"[" * 100000, False, _known)
    assert isinstance(verdict, ingest.Rejected) and verdict.reason == "too_large"
    verdict = ingest.classify_ota("pb/th-01/ota/status", b"[" * 100000, False, _known)
    assert isinstance(verdict, ingest.Rejected) and verdict.reason == "too_large"


def test_acl_block_is_the_broker_acl() -> None:
    assert _text_block("acl").body.strip() == acl_text().strip()


def test_liveness_deadline_examples() -> None:
    lines = [line for line in _text_block("deadline").body.splitlines() if line.strip()]
    assert lines
    for line in lines:
        m = re.fullmatch(r"keepalive=(\d+) telemetry_s=([\d.]+) -> ([\d.]+)", line.strip())
        assert m, f"cannot read deadline example {line!r}"
        assert gw_service._deadline(int(m[1]), float(m[2])) == float(m[3]), line


def test_cli_examples_map_to_ops() -> None:
    lines = [line for line in _text_block("cli").body.splitlines() if line.strip()]
    assert lines
    for line in lines:
        words, _, rest = line.partition(" => ")
        op, _, args = rest.partition(" ")
        assert op in proto.OPS, line
        assert parse_command(shlex.split(words)) == (op, json.loads(args)), line


def test_home_assistant_examples_are_what_the_bridge_publishes() -> None:
    from gateway import homeassistant as ha

    (config,) = [e for e in EXAMPLES if e.tag == "homeassistant-config"]
    made = ha.discovery(ha.CLIMATE, "th-01", "thermostat", "0.2.0", {}, (5.0, 30.0))
    assert json.loads(config.body) == json.loads(ha.config_payload(made))
    (update,) = [e for e in EXAMPLES if e.tag == "homeassistant-update"]
    assert json.loads(update.body) == json.loads(ha.update_state("2026.11.2", "2026.11.3"))


def test_usage_examples_parse() -> None:
    lines = [line for line in _text_block("usage").body.splitlines() if line.strip()]
    assert lines
    parser = build_parser()
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "permabeta", line
        args = parser.parse_args(words[1:])
        assert callable(args.func), line


def test_api_table_says_who_may_call_each_route_as_the_gateway_checks_it() -> None:
    from gateway.api_accounts import ACCESS, Rule

    def who(rule: Rule) -> str:
        if rule.role is None:
            return "anyone"
        return f"{rule.role} of the device" if rule.device and rule.role == "owner" else rule.role

    for row in table(section(TEXT, "10.")):
        (route,) = code_names(row[0])[:1]
        method, path = route.split(" ", 1)
        assert row[1] == who(ACCESS[(method, path)]), route


def test_api_table_lists_exactly_the_routes_of_the_app() -> None:
    documented = set()
    for row in table(section(TEXT, "10.")):
        (route,) = code_names(row[0])[:1]
        method, path = route.split(" ", 1)
        documented.add((method, path))
    app = gw_api.make_app(None, "token")  # type: ignore[arg-type]
    served = {
        (r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource
    }
    assert documented == served


def test_the_ble_service_table_is_the_peripherals() -> None:
    from simulator import ble_peripheral as ble

    lines = section(TEXT, "16.")
    assert f"`{ble.SERVICE_UUID}`" in "\n".join(lines)
    rows = {row[0]: (code_names(row[1]), row[2], row[3]) for row in table(lines)}
    assert rows == {
        "control": ([ble.CONTROL_UUID], "write (with response)", "gateway -> device"),
        "bulk": ([ble.BULK_UUID], "write without response", "gateway -> device"),
        "notify": ([ble.NOTIFY_UUID], "notify", "device -> gateway"),
    }
