"""docs/protocol.md is normative: every tagged example in it is checked here
against the implementation, and every message kind and command op of the code
must be documented with an example, so the spec cannot fall behind the code.

Tags (the fence's info string): ``json <kind>``, ``json invalid-<kind> <code>``,
``json cmd`` directly followed by ``json reply`` (run on a real Device),
``json manifest``, ``json invalid-manifest``, ``json reject[-retained] <topic>
<reason>``, ``json ignore <topic>``, ``text acl``, ``text deadline``, ``text cli``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import itertools
import json
import re
import shlex
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from firmware.pb import features as pb_features
from firmware.pb import proto, runtime
from firmware.pb.errors import FeatureError, ProtocolError
from firmware.pb.hal.host import HostHal
from firmware.pb.mqtt_client import MQTTClient
from firmware.pb.runtime import Device
from firmware.pb.store import Store
from gateway import api as gw_api
from gateway import ingest
from gateway import service as gw_service
from gateway.broker import BrokerUrl, acl_text
from gateway.cli import parse_command
from gateway.provision import board_for, make_config

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
FEATURES = ROOT / "firmware" / "features"

# ---- the document ----------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One tagged fenced block of the document."""

    lang: str
    tag: str
    params: tuple[str, ...]
    body: str
    line: int

    @property
    def payload(self) -> bytes:
        return self.body.encode("utf-8")

    def value(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"protocol.md:{self.line} ```{' '.join((self.lang, self.tag, *self.params))}"


_FENCE = re.compile(r"^```(\S+)\s+(\S+)(.*)$")


def _parse(text: str) -> list[Example]:
    out: list[Example] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("```"):
            i += 1
            continue
        m = _FENCE.match(line)
        end = i + 1
        while end < len(lines) and lines[end] != "```":
            end += 1
        assert end < len(lines), f"protocol.md:{i + 1}: fence never closed"
        if m:
            body = "\n".join(lines[i + 1 : end])
            out.append(Example(m[1], m[2], tuple(m[3].split()), body, i + 1))
        i = end + 1
    return out


def _section(text: str, heading: str) -> list[str]:
    """The lines under the heading that starts with `heading`, up to the next
    heading of the same or a higher level."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#") and line.lstrip("#").strip().startswith(heading):
            level = len(line) - len(line.lstrip("#"))
            out = []
            for follow in lines[i + 1 :]:
                if follow.startswith("#") and len(follow) - len(follow.lstrip("#")) <= level:
                    break
                out.append(follow)
            return out
    raise AssertionError(f"protocol.md has no section {heading!r}")


def _table(lines: list[str]) -> list[list[str]]:
    """Body rows of the first markdown table in lines, cells stripped."""
    rows = [line for line in lines if line.startswith("|")]
    return [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows[2:]]


TEXT = DOC.read_text(encoding="utf-8")
EXAMPLES = _parse(TEXT)
KINDS = tuple(proto._SCHEMAS)

VALID = [e for e in EXAMPLES if e.lang == "json" and e.tag in KINDS]
INVALID = [e for e in EXAMPLES if e.lang == "json" and e.tag.startswith("invalid-") and e.tag[8:] in KINDS]
MANIFESTS = [e for e in EXAMPLES if e.tag == "manifest"]
INVALID_CMDS = [e for e in INVALID if e.tag == "invalid-cmd"]
BAD_MANIFESTS = [e for e in EXAMPLES if e.tag == "invalid-manifest"]
REJECTS = [e for e in EXAMPLES if e.tag in ("reject", "reject-retained")]
IGNORES = [e for e in EXAMPLES if e.tag in ("ignore", "ignore-retained")]
KNOWN_TAGS = {*KINDS, *(f"invalid-{k}" for k in KINDS), "manifest", "invalid-manifest"}
KNOWN_TAGS |= {"reject", "reject-retained", "ignore", "ignore-retained", "acl", "deadline", "cli"}


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


# ---- a device without a network ---------------------------------------------


@dataclass(frozen=True)
class Published:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    first: bool


@dataclass
class Rig:
    """A real Device (host HAL, Store, the thermostat feature) whose MQTT
    client only queues; every publish is recorded."""

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


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    def make(dev: str = "th-01") -> Rig:
        root = tmp_path / dev
        (root / "hal").mkdir(parents=True)
        shutil.copytree(
            FEATURES / "thermostat",
            root / "features" / "thermostat",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        board = board_for("thermostat")
        config = make_config(dev, board, BrokerUrl("127.0.0.1", 1883), "secret")
        device = Device(
            config,
            HostHal(board, str(root)),
            Store(str(root / "data")),
            str(root / "features"),
            importer=_import_feature,
            log=lambda _dev, _msg: None,
        )
        sent: list[Published] = []
        queue = device.client.publish

        def publish(
            topic: str, payload: bytes, qos: int = 0, retain: bool = False, first: bool = False
        ) -> bool:
            sent.append(Published(topic, bytes(payload), qos, retain, first))
            return bool(queue(topic, payload, qos, retain, first))

        device.client.publish = publish
        r = Rig(device, sent, root)
        r.set_sensors(temperature=21.0, humidity=45.0)
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


def _codes_raised(module: ModuleType, call: str, position: int) -> set[str]:
    """String constants passed at `position` to calls of `call` in a module's source."""
    codes = set()
    for node in ast.walk(ast.parse(Path(inspect.getfile(module)).read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name != call:
            continue
        if len(node.args) > position:
            arg = node.args[position]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                codes.add(arg.value)
        elif call == "_BadArgs":
            codes.add(str(inspect.signature(runtime._BadArgs).parameters["code"].default))
    return codes


def test_protocol_error_table_lists_exactly_the_codes_proto_raises() -> None:
    documented = {row[0].strip("`") for row in _table(_section(TEXT, "5.1"))}
    assert documented == _codes_raised(proto, "ProtocolError", 0)


def test_reply_error_table_lists_every_code_the_runtime_replies_with() -> None:
    documented = {row[0].strip("`") for row in _table(_section(TEXT, "5.2"))}
    raised = _codes_raised(runtime, "_BadArgs", 1) | _codes_raised(runtime, "reply_error", 2)
    assert raised <= documented, f"undocumented reply error codes: {raised - documented}"


def test_every_validation_code_has_an_invalid_example() -> None:
    shown = {e.params[0] for e in INVALID} | {e.params[1] for e in REJECTS}
    shown.add("too_large")  # no 4 KiB example: test_decode_refuses_more_than_max_message
    missing = _codes_raised(proto, "ProtocolError", 0) - shown
    assert not missing, f"no invalid example for {missing}"


def test_every_gateway_rejection_reason_has_an_example() -> None:
    shown = {e.params[1] for e in REJECTS}
    for reason in (ingest.SPOOFED, ingest.UNKNOWN_DEVICE, ingest.RETAINED_COMMAND):
        assert reason in shown, f"no ```json reject <topic> {reason} example"


def _limit_sources() -> dict[str, Any]:
    client = inspect.signature(MQTTClient.__init__).parameters
    sources: dict[str, Any] = {
        "proto.MAX_MESSAGE": proto.MAX_MESSAGE,
        "proto.MAX_ID": proto.MAX_ID,
        "runtime._RECENT_CMDS": runtime._RECENT_CMDS,
        "features.MAX_FEATURES": pb_features.MAX_FEATURES,
        "features._MAX_STR": pb_features._MAX_STR,
        "features._MAX_LIST": pb_features._MAX_LIST,
        "service._MAX_PENDING_STATES": gw_service._MAX_PENDING_STATES,
        "api.MAX_TIMEOUT_S": gw_api.MAX_TIMEOUT_S,
    }
    for name in (
        "queue_size",
        "max_inflight",
        "max_packet",
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
    rows = _table(_section(TEXT, "8. Limits"))
    documented = {row[2].strip("`"): float(row[1]) for row in rows}
    assert set(documented) == set(sources), "the limits table and the checked constants differ"
    for name, value in documented.items():
        assert value == sources[name], f"{name} is {sources[name]} in the code, {value} in protocol.md"


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
    for i in range(runtime._RECENT_CMDS):
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
    if isinstance(cmd_id, str) and 0 < len(cmd_id) <= proto.MAX_ID:
        (reply,) = out
        got = proto.decode("reply", reply.payload)
        assert (got["id"], got["ok"], got["error"]["code"]) == (cmd_id, False, example.params[0])
    else:
        (event,) = out
        assert event.topic == r.topic("event")
        assert proto.decode("event", event.payload)["kind"] == "bad_command"


def test_retained_command_is_ignored_by_the_device(rig: Callable[..., Rig]) -> None:
    r = rig()
    assert r.command(_one("cmd", op="ping").payload, retain=True) == []


# ---- what the runtime publishes matches the documented messages -------------


def test_last_will_is_the_documented_offline_state(rig: Callable[..., Rig]) -> None:
    r = rig()
    will = r.device.client.will
    assert will is not None
    topic, payload, qos, retain = will
    assert (topic, qos, retain) == (r.topic("state"), 1, True)
    assert proto.decode("state", payload) == _one("state", state="offline", reason="lost").value()


def test_birth_is_hello_then_online_state_ahead_of_the_queue(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.device.publish_telemetry()  # something already queued
    on_up = r.device.client.on_up
    assert on_up is not None
    on_up()
    birth = r.sent[-2:]
    assert all((p.qos, p.retain, p.first) == (1, True, True) for p in birth)
    by_topic = {p.topic: p.payload for p in birth}
    assert _shape(proto.decode("hello", by_topic[r.topic("hello")])) == _shape(_one("hello").value())
    state = proto.decode("state", by_topic[r.topic("state")])
    assert _shape(state) == _shape(_one("state", state="online").value())
    # the order on the wire is the client's queue order
    wire = [t for t, *_ in r.device.client._queue]
    assert wire == [r.topic("hello"), r.topic("state"), r.topic("telemetry")]


def test_telemetry_has_the_documented_fields(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.device.publish_telemetry()
    (p,) = r.on("telemetry")
    assert (p.qos, p.retain) == (0, False)
    msg = proto.decode("telemetry", p.payload)
    assert _shape(msg) == _shape(_one("telemetry").value())
    assert msg["seq"] == 1


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
    on_up = r.device.client.on_up
    assert on_up is not None
    on_up()
    r.device.publish_telemetry()
    r.set_sensors(temperature=99, humidity=45.0)
    r.device.sample()
    r.command(_one("cmd", op="ping").payload)
    seen = {p.topic.rsplit("/", 1)[1]: (p.qos, p.retain) for p in r.sent}
    rows = [row for row in _table(_section(TEXT, "1.1")) if row[0].strip("`") in proto.UP]
    assert {row[0].strip("`") for row in rows} == set(proto.UP)
    for row in rows:
        kind = row[0].strip("`")
        assert seen[kind] == (int(row[3]), row[4] == "yes"), f"table 1.1 row {kind}"


# ---- features ----------------------------------------------------------------


@pytest.mark.parametrize("example", MANIFESTS, ids=_ids(MANIFESTS))
def test_manifest_example_is_valid(example: Example) -> None:
    pb_features.check_manifest(example.value())


def test_thermostat_manifest_example_is_the_shipped_manifest() -> None:
    shipped = json.loads((FEATURES / "thermostat" / "manifest.json").read_text())
    documented = [e.value() for e in MANIFESTS if e.value().get("name") == "thermostat"]
    assert documented == [shipped]


@pytest.mark.parametrize("example", BAD_MANIFESTS, ids=_ids(BAD_MANIFESTS))
def test_invalid_manifest_example_is_refused(example: Example) -> None:
    with pytest.raises(FeatureError):
        pb_features.check_manifest(example.value())


# ---- the gateway ---------------------------------------------------------------


def _known(dev: str) -> bool:
    return dev == "th-01"


@pytest.mark.parametrize("example", REJECTS, ids=_ids(REJECTS))
def test_gateway_rejects_example_with_its_reason(example: Example) -> None:
    topic, reason = example.params
    verdict = ingest.classify(topic, example.payload, example.tag.endswith("-retained"), _known)
    assert isinstance(verdict, ingest.Rejected), f"{example}: {verdict}"
    assert verdict.reason == reason, f"{example}: {verdict.detail}"


@pytest.mark.parametrize("example", IGNORES, ids=_ids(IGNORES))
def test_gateway_ignores_example(example: Example) -> None:
    (topic,) = example.params
    assert ingest.classify(topic, example.payload, example.tag.endswith("-retained"), _known) is None


def test_gateway_accepts_every_valid_device_message() -> None:
    for e in VALID:
        if e.tag in proto.UP:
            msg = e.value()
            verdict = ingest.classify(proto.topic(msg["dev"], e.tag), e.payload, False, _known)
            assert isinstance(verdict, ingest.Accepted), f"{e}: {verdict}"


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


# ---- known divergences between the spec and the code ----------------------------
# protocol.md section 6: bad input never raises out of the gateway.


@pytest.mark.xfail(
    strict=True, raises=TypeError, reason="proto.validate calls len() on any 'id' field (proto.py:155)"
)
def test_gateway_rejects_non_string_id_instead_of_raising() -> None:
    msg = _one("telemetry").value() | {"id": 5}
    verdict = ingest.classify("pb/th-01/telemetry", json.dumps(msg).encode(), False, _known)
    assert isinstance(verdict, ingest.Rejected)


@pytest.mark.xfail(
    strict=True, raises=RecursionError, reason="proto.decode catches only ValueError (proto.py:171)"
)
def test_gateway_rejects_deeply_nested_json_instead_of_raising() -> None:
    verdict = ingest.classify("pb/th-01/telemetry", b"[" * 4000, False, _known)
    assert isinstance(verdict, ingest.Rejected)
