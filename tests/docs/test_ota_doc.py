"""docs/ota.md and docs/security.md are normative: what can be checked against
the code is checked here, so the docs cannot fall behind it.

ota.md: its tagged examples (``json offer``, ``json cancel``, ``json req``,
``json status``, ``json release-manifest``, ``json freshness``, ``json job``,
``json pointer``) against otaproto, trust, a real download agent and a real
install; the chunk header against otaproto's struct format; every status
state; the config keys the code reads; the flash layout against the file
names in the code; the power-cut points against the code's fault points;
the limits. security.md: it names every attack test and only tests that
exist (the attack tests excepted while they are written), and its trust codes
are the ones the code raises.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import loader
from firmware.pb import API, runtime
from firmware.pb.config import SCHEMA as CONFIG_SCHEMA
from firmware.pb.config import check as check_config
from firmware.pb.errors import ConfigError, ProtocolError, TrustError
from firmware.pb.hal import Hal
from firmware.pb.net import wire
from firmware.pb.ota import clock, flash, forms, install, report, trust
from firmware.pb.ota import download as pb_ota
from firmware.pb.ota import image as device_image
from firmware.pb.ota import transfer as device_transfer
from firmware.pb.peer import ota_transfer as otaproto
from gateway import clock as gw_clock
from gateway import updater as gw_updater
from gateway import updates as gw_updates
from ota import image as ota_image
from ota import release as ota_release
from ota.envelope import canonical
from ota.keys import Keys, freshness, keygen, time_statement

from .markdown import (
    DOCS,
    ROOT,
    Example,
    all_strings,
    code_names,
    keyword_values,
    module_strings,
    parse_examples,
    section,
    string_args,
    table,
)

PB = ROOT / "firmware" / "pb"
OTA = (DOCS / "ota.md").read_text(encoding="utf-8")
SECURITY = (DOCS / "security.md").read_text(encoding="utf-8")
PROTOCOL = (DOCS / "protocol.md").read_text(encoding="utf-8")
EXAMPLES = parse_examples(OTA, "ota.md")
TAGS = (
    "offer",
    "cancel",
    "req",
    "status",
    "release-manifest",
    "freshness",
    "time",
    "job",
    "pointer",
    "states",
)


def _ota(heading: str) -> list[str]:
    return section(OTA, heading, "ota.md")


def _tagged(tag: str) -> list[Example]:
    return [e for e in EXAMPLES if e.tag == tag]


def _one(tag: str) -> Example:
    (e,) = _tagged(tag)
    return e


def _ids(examples: list[Example]) -> list[str]:
    return [f"L{e.line}-{e.tag}" for e in examples]


# ---- the examples -------------------------------------------------------------------


def test_every_tagged_block_has_a_known_tag() -> None:
    unknown = [str(e) for e in EXAMPLES if e.tag not in TAGS]
    assert not unknown, f"tags the test does not check: {unknown}"
    for tag in TAGS:
        assert _tagged(tag), f"ota.md has no ```json {tag} example"


@pytest.mark.parametrize(
    "example", _tagged("offer") + _tagged("cancel"), ids=_ids(_tagged("offer") + _tagged("cancel"))
)
def test_offer_examples_are_valid(example: Example) -> None:
    msg = otaproto.check_offer(example.value())
    assert (msg.get("op") == "cancel") == (example.tag == "cancel")


def test_an_offer_names_a_manifest_of_at_most_an_envelope() -> None:
    offer = _one("offer").value()
    otaproto.check_offer(offer | {"size": trust.MAX_ENVELOPE})
    for size in (0, trust.MAX_ENVELOPE + 1):
        with pytest.raises(ProtocolError):
            otaproto.check_offer(offer | {"size": size})


@pytest.mark.parametrize("example", _tagged("req"), ids=_ids(_tagged("req")))
def test_request_examples_are_valid(example: Example) -> None:
    req = otaproto.check_request(example.value())
    assert req["v"] == 2
    if "objs" in req:
        assert req["chunk"] <= otaproto.MAX_CHUNK and len(req["objs"]) <= otaproto.MAX_OBJECTS
        with pytest.raises(ProtocolError):
            otaproto.check_request(req | {"chunk": otaproto.MAX_CHUNK + 1})
    with pytest.raises(ProtocolError):
        otaproto.check_request(req | {"win": otaproto.MAX_WINDOW + 1})


@pytest.mark.parametrize("example", _tagged("status"), ids=_ids(_tagged("status")))
def test_status_examples_are_valid(example: Example) -> None:
    msg = otaproto.check_status(example.value())
    assert ("reason" in msg) == (msg["state"] in ("deferred", "failed", "rolled_back", "safe_mode"))
    assert "ts" in msg and isinstance(msg["counter"], int)


def test_the_release_manifest_example_passes_the_devices_rules() -> None:
    body = _one("release-manifest").value()
    trust.check_manifest(body)
    ota_release.check_notes_entry(body)  # (the tools and the gateway check the notes, a device skips them)
    trust.check_for_device(body, "thermostat", API, 1)
    # it carries both forms of its modules; each device takes its own and the manifests
    for form in ("py", "mpy"):
        taken = [f["path"] for f in forms.device_files(body["files"], form)]
        assert taken == [
            f"eco/__init__.{form}",
            "eco/manifest.json",
            f"thermostat/__init__.{form}",
            "thermostat/manifest.json",
        ]


def _files(n: int, path_len: int) -> list[dict[str, Any]]:
    h = hashlib.sha256(b"x").hexdigest()
    paths = ["thermostat/manifest.json"]
    for i in range(n - 1):
        stem = f"thermostat/m{i:02d}"
        paths.append(stem + "x" * max(0, path_len - len(stem) - 3) + ".py")
    return [{"path": p, "size": 12345, "sha256": h, "zsize": 1234, "zsha256": h} for p in sorted(paths)]


def test_max_files_fit_a_16kb_manifest_as_documented() -> None:
    body = _one("release-manifest").value()
    body["features"] = {"thermostat": body["features"]["thermostat"]}
    notes = body.pop("notes")
    h = hashlib.sha256(b"k").hexdigest()
    # without notes 64 files fit; notes take the room of one
    for files, with_notes in ((trust.MAX_FILES, {}), (trust.MAX_FILES - 1, {"notes": notes})):
        body = {**body, **with_notes, "files": _files(files, 35)}
        trust.check_manifest(body)
        for signatures in (1, 2):
            envelope = {"signed": canonical(body), "signatures": [{"keyid": h, "sig": h + h}] * signatures}
            size = len(json.dumps(envelope, separators=(",", ":")))
            assert size <= trust.MAX_ENVELOPE, f"{files} files, {signatures} signatures: {size} bytes"
    body["files"] = _files(trust.MAX_FILES + 1, 20)
    with pytest.raises(TrustError) as err:
        trust.check_manifest(body)
    assert err.value.code == "bad_manifest"


def test_the_freshness_example_is_a_statement_the_gateway_makes() -> None:
    body = _one("freshness").value()
    trust.check_freshness(
        body, "thermostat", body["manifest"], body["counter"], body["expires"], 0, "th-1", "5f2a9c01b7e4"
    )
    # the version is the signing time in ms, and the statement lives DEFAULT_FRESHNESS_TTL_S
    signed_at = (body["version"] + 0.5) / 1000
    assert body["expires"] == int(signed_at + gw_updates.DEFAULT_FRESHNESS_TTL_S)
    assert gw_updates.next_freshness_version(body["version"] - 5, signed_at) == body["version"]
    # the offer example carries exactly this statement, for its manifest
    offer = _one("offer").value()
    assert json.loads(offer["freshness"]["signed"]) == body
    assert offer["manifest"] == body["manifest"]


def test_the_time_example_is_a_statement_the_gateway_makes(tmp_path: Path) -> None:
    body = _one("time").value()
    assert trust.check_time(body, "th-1") == body["time"]
    k = keygen(tmp_path / "k")
    made = json.loads(json.loads(time_statement(k, "th-1", (body["time"] + 0.5) / 1000))["signed"])
    assert made == body


def test_freshness_older_or_expired_is_a_freeze() -> None:
    body = _one("freshness").value()
    args = ("thermostat", body["manifest"], body["counter"])
    ids = ("th-1", "5f2a9c01b7e4")
    trust.check_freshness(body, *args, body["expires"], body["version"], *ids)  # the same one again is fine
    for now, last in ((body["expires"] + 1, 0), (body["expires"], body["version"] + 1)):
        with pytest.raises(TrustError) as err:
            trust.check_freshness(body, *args, now, last, *ids)
        assert err.value.code == "freeze"


# ---- a real agent takes the documented offer ----------------------------------------


def _agent(base: Path, counter: int = 1) -> pb_ota.Agent:
    (base / "ota").mkdir(parents=True, exist_ok=True)
    offered_at = _one("job").value()["offered_at"]
    agent = pb_ota.Agent(
        str(base),
        "thermostat",
        counter,
        lambda *a: None,
        lambda msg: None,
        lambda: offered_at,
        lambda: True,
        lambda name: None,
    )
    pb_ota.configure(agent, {"device": "th-1"}, Hal({"capabilities": _CAPS}))
    return agent


def test_the_job_example_is_what_the_agent_writes(tmp_path: Path) -> None:
    reports: list[dict[str, Any]] = []
    agent = _agent(tmp_path)
    agent._report = reports.append
    agent.on_offer(_one("offer").payload)
    job = json.loads((tmp_path / flash.JOB).read_bytes())
    documented = _one("job").value()
    assert set(job) == set(documented)
    for key in ("id", "manifest", "size", "counter", "offered_at", "phase"):
        assert job[key] == documented[key], key
    assert job["freshness"] == _one("offer").value()["freshness"]
    assert [(r["state"], r["id"], r["counter"]) for r in reports] == [("offered", job["id"], job["counter"])]


@pytest.mark.parametrize(
    ("counter", "model", "now_shift", "reason"),
    [
        (2, "thermostat", 0, "rollback: "),
        (1, "shirt", 0, "wrong_model: "),
        (1, "thermostat", 10**6, "freeze: "),
    ],
)
def test_the_first_look_refuses_at_once(
    tmp_path: Path, counter: int, model: str, now_shift: int, reason: str
) -> None:
    reports: list[dict[str, Any]] = []
    agent = _agent(tmp_path, counter)
    agent._report = reports.append
    agent.model = model
    agent.now = lambda: _one("freshness").value()["expires"] + now_shift
    agent.on_offer(_one("offer").payload)
    ((state, why),) = [(r["state"], r["reason"]) for r in reports]
    assert state == "failed" and why.startswith(reason), why
    assert reason.rstrip(": ") in OTA


def test_a_bad_offer_is_failed_with_id_dash(tmp_path: Path) -> None:
    reports: list[dict[str, Any]] = []
    agent = _agent(tmp_path)
    agent._report = reports.append
    agent.on_offer(b'{"v": 1, "id": ""}')
    ((r),) = reports
    assert (r["state"], r["id"]) == ("failed", "-") and r["reason"].startswith("bad offer: ")


# ---- a real install writes the documented pointer --------------------------------------


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Keys, ota_release.Release]:
    tmp = tmp_path_factory.mktemp("release")
    keys = keygen(tmp / "keys")
    features = ROOT / "firmware" / "features" / "thermostat"
    rel = ota_release.build("thermostat", [features], "2026.11.2", tmp / "R", counter=2, keys=keys)
    return keys, rel


def _staged_device(base: Path, keys: Keys, rel: ota_release.Release, now: float) -> dict[str, Any]:
    """A device with the factory set, its root, and rel downloaded and staged."""
    shutil.copytree(
        ROOT / "firmware" / "features" / "thermostat",
        base / "features" / "thermostat",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    stage = base / flash.STAGE
    stage.mkdir(parents=True)
    (base / flash.ROOT).write_bytes(keys.root_bytes)
    (stage / "manifest.json").write_bytes(rel.manifest)
    for f in rel.files:
        data = zlib.decompress(rel.blob_path(f).read_bytes(), pb_ota._WBITS)
        (stage / f.sha256).write_bytes(data)
    statement = json.loads(
        freshness(
            keys, "thermostat", rel.counter, rel.sha256, 3600, now, device="th-1", update="5f2a9c01b7e4"
        )
    )
    job = {
        "id": "5f2a9c01b7e4",
        "manifest": rel.sha256,
        "size": len(rel.manifest),
        "freshness": statement,
        "counter": rel.counter,
        "offered_at": now,
        "phase": "staged",
    }
    (base / flash.JOB).write_text(json.dumps(job))
    return job


_CAPS: dict[str, dict[str, Any]] = {"temperature": {}, "humidity": {}, "relay": {}}


def test_the_pointer_example_is_what_the_install_writes(
    tmp_path: Path, signed: tuple[Keys, ota_release.Release]
) -> None:
    keys, rel = signed
    now = time.time()
    job = _staged_device(tmp_path, keys, rel, now)
    assert install.install_staged(str(tmp_path), ("th-1", "thermostat", _CAPS, API), now) is True
    pointer = json.loads((tmp_path / flash.POINTER).read_bytes())
    documented = _one("pointer").value()
    assert set(pointer) == set(documented)
    assert set(pointer["prev"]) == set(documented["prev"])
    assert pointer["prev"] == {"set": flash.FACTORY, "counter": 0, "manifest": None}  # as 4.4 says
    assert (pointer["state"], pointer["boots"], pointer["update"]) == ("trial", 0, job["id"])
    assert (pointer["counter"], pointer["manifest"]) == (rel.counter, rel.sha256)
    # what is on flash afterwards: the slot, the freshness version, the report; no job, no staging
    slot = tmp_path / pointer["set"]
    assert pointer["set"] in flash.SLOTS
    assert (slot / "manifest.json").read_bytes() == rel.manifest
    assert (slot / "features" / "thermostat" / "manifest.json").is_file()
    version = json.loads(job["freshness"]["signed"])["version"]
    assert json.loads((tmp_path / flash.TRUST_STATE).read_bytes()) == {"freshness": version}
    assert not (tmp_path / flash.JOB).exists() and not (tmp_path / flash.STAGE).exists()
    reports = flash.take_reports(str(tmp_path))
    assert [(r["state"], r["id"], r["counter"]) for r in reports] == [("activating", job["id"], 2)]
    # the next boot is trial boot 1
    _root, p, trial, report = loader.decide(str(tmp_path))
    assert (trial, p["boots"], report) == (True, 1, None)


def test_a_refused_install_reports_its_trust_code(
    tmp_path: Path, signed: tuple[Keys, ota_release.Release]
) -> None:
    keys, rel = signed
    now = time.time()
    _staged_device(tmp_path, keys, rel, now)
    assert install.install_staged(str(tmp_path), ("th-1", "shirt", _CAPS, API), now) is True
    (report,) = flash.take_reports(str(tmp_path))
    assert report["state"] == "failed" and report["reason"].startswith("wrong_model: ")
    assert not (tmp_path / flash.POINTER).exists() and not (tmp_path / flash.JOB).exists()


def test_more_than_max_trial_boots_roll_back(tmp_path: Path) -> None:
    (tmp_path / "features").mkdir()
    (tmp_path / "ota").mkdir()
    pointer = _one("pointer").value() | {"prev": {"set": "features", "counter": 0, "manifest": None}}
    pointer["boots"] = loader.MAX_TRIAL_BOOTS
    (tmp_path / flash.POINTER).write_text(json.dumps(pointer))
    _root, p, trial, report = loader.decide(str(tmp_path))
    assert (trial, p["state"], p["set"]) == (False, "committed", "features")
    reason = f"trial did not commit in {loader.MAX_TRIAL_BOOTS} boots"
    assert report["state"] == "rolled_back" and report["reason"] == reason
    assert reason in OTA


def test_a_trial_given_up_says_what_ended_its_last_boot(tmp_path: Path) -> None:
    (tmp_path / "features").mkdir()
    (tmp_path / "ota").mkdir()
    (tmp_path / "data").mkdir()
    pointer = _one("pointer").value() | {"prev": {"set": "features", "counter": 0, "manifest": None}}
    pointer["boots"] = loader.MAX_TRIAL_BOOTS
    (tmp_path / flash.POINTER).write_text(json.dumps(pointer))
    # what the runtime keeps as a feature's import runs out of RAM (pb/start.py)
    crash = "MemoryError: memory allocation failed, allocating 196608 bytes, at import of feature hungry"
    (tmp_path / "data" / "state.json").write_text(json.dumps({"reset_request": "crash", "last_crash": crash}))
    _root, p, trial, report = loader.decide(str(tmp_path))
    assert (trial, p["set"], report["state"]) == (False, "features", "rolled_back")
    assert report["reason"] == f"trial did not commit in 3 boots; the last ended by {crash}"
    assert " ".join(report["reason"].split()) in " ".join(OTA.split())


def test_safe_mode_when_nothing_is_usable(tmp_path: Path) -> None:
    # a board flashed with the runtime only: no features, no ota/ folder yet
    root, p, trial, report = loader.decide(str(tmp_path))
    assert (root, p, trial) == (None, None, False)
    assert (report["state"], report["id"], report["counter"]) == ("safe_mode", "-", 0)
    assert [r["state"] for r in flash.take_reports(str(tmp_path))] == ["safe_mode"]


# ---- the transfer's wire format -----------------------------------------------------------


def test_chunk_header_table_is_otaprotos_struct() -> None:
    rows = table(_ota("3.3"), "| offset |")
    layout = re.findall(r"(\d*)([a-zA-Z])", otaproto.CHUNK_FORMAT[1:])
    offset = 0
    fields = []
    for count, code in layout:
        size = struct.calcsize(">" + (count or "") + code)
        fields.append((offset, size))
        offset += size
    assert [(int(r[0]), int(r[1])) for r in rows] == fields
    assert offset == otaproto.CHUNK_HEADER == int(re.search(r"A (\d+)-byte header", OTA)[1])  # type: ignore[index]
    assert otaproto.CHUNK_FORMAT.startswith(">") and "big-endian" in rows[3][2]
    # the version byte, index, stream, position, offset, tag and CRC in the documented places
    chunk = otaproto.encode_chunk(7, 1, 8192, 2048, b"abc", bytes(range(8)), last=True)
    assert chunk[0] == 2 and chunk[1] == otaproto.FLAG_LAST and chunk[2:4] == (1).to_bytes(2, "big")
    assert chunk[4:8] == (7).to_bytes(4, "big") and chunk[8:12] == (8192).to_bytes(4, "big")
    assert chunk[12:16] == (2048).to_bytes(4, "big") and chunk[16:24] == bytes(range(8))
    assert chunk[24:28] == zlib.crc32(b"abc", zlib.crc32(chunk[:24])).to_bytes(4, "big")
    assert otaproto.decode_chunk(chunk)[1:6] == (1, 7, 8192, 2048, bytes(range(8)))
    # the device's private names are the gateway's public ones
    assert (
        device_transfer._HEADER,
        device_transfer._MAX,
        device_transfer._ERROR,
        device_transfer._ID_LEN,
    ) == (
        otaproto.CHUNK_HEADER,
        otaproto.MAX_CHUNK,
        otaproto.FLAG_ERROR,
        otaproto.UPDATE_ID_LEN,
    )
    assert device_transfer._MAX_OBJECTS == otaproto.MAX_OBJECTS


def test_chunk_flags_table() -> None:
    rows = table(_ota("3.3"), "| flag |")
    assert {r[0].strip("`"): int(r[1]) for r in rows} == {
        "FLAG_LAST": otaproto.FLAG_LAST,
        "FLAG_ERROR": otaproto.FLAG_ERROR,
    }
    error_bytes = int(re.search(r"at most (\d+) bytes", rows[1][2])[1])  # type: ignore[index]
    assert error_bytes == gw_updates._MAX_ERROR


def test_status_states_table_is_otaprotos() -> None:
    rows = table(_ota("3.4"), "| state |")
    assert [r[0].strip("`") for r in rows] == list(otaproto.STATES)
    terminal = [s for s in otaproto.STATES if s not in gw_updates.ACTIVE and s != "safe_mode"]
    assert tuple(terminal) == otaproto.TERMINAL == gw_updates.ENDED


def _emitted_states() -> set[str]:
    """States the firmware puts in a status: report("x", ...), _status(..., "x", ...),
    {"state": "x"}."""
    found: set[str] = set()
    sources = [PB / "ota" / f"{m}.py" for m in ("download", "defer", "install", "updates", "update_mode")]
    sources += [PB / "ota" / "trial.py", PB.parent / "loader.py"]
    for path in sources:
        found |= string_args(path, "report", 0) | string_args(path, "_status", 0)
        found |= (
            string_args(path, "_status", 1) | string_args(path, "_report", 1) | string_args(path, "status", 1)
        )
        text = path.read_text()
        found |= set(re.findall(r'"state": "(\w+)"', text))
    return found & set(otaproto.STATES)


def test_every_state_but_verified_is_sent_and_the_table_says_who() -> None:
    rows = {r[0].strip("`"): r[1] for r in table(_ota("3.4"), "| state |")}
    sent = _emitted_states()
    assert sent == set(otaproto.STATES) - {"verified"}, "the states table says verified is never sent"
    assert rows["verified"] == "nobody"
    assert all(rows[s] != "nobody" for s in sent)


def test_kept_statuses_are_documented() -> None:
    sentence = re.search(r"Of the\s+states (.*?) the runtime", OTA, re.S)
    assert sentence, "ota.md 3.4 names the kept states"
    assert set(code_names(sentence[1])) == set(report.KEPT)


def test_the_gateways_ranking_is_documented() -> None:
    ranks = sorted({gw_updates.step_rank(s) for s in gw_updates.ACTIVE})
    groups = [[f"`{s}`" for s in gw_updates.ACTIVE if gw_updates.step_rank(s) == r] for r in ranks]
    ranked = " < ".join(" = ".join(g) for g in groups)
    assert ranked in " ".join(OTA.split()), "ota.md 5.3 ranks the update states as the gateway does"


def test_hello_ota_states_are_in_protocol_md() -> None:
    info = set(all_strings(PB / "ota" / "updates.py")) & {"factory", "trial", "committed", "safe_mode"}
    states = info | {s for s in all_strings(PB / "ota" / "update_mode.py") if s == "updating"}
    assert states == {"factory", "trial", "committed", "safe_mode", "updating"}
    documented = set(code_names(" ".join(section(PROTOCOL, "3.1"))))
    assert states <= documented


# ---- the device: config, flash, power cuts, limits -------------------------------------------


REQUIRED = "!"


def _schema() -> list[tuple[str, Any, Any, int, int]]:
    """CONFIG_SCHEMA as (key, type, default, lowest, highest); an
    enumeration's type is the tuple of its values, a default None: may be
    left out, REQUIRED: required."""
    out = []
    for line in CONFIG_SCHEMA.strip().split("\n"):
        key, kind, default, lo, hi = line.split(" ")
        value: Any = default
        if default == "-":
            value = None
        elif kind == "bool" and default != REQUIRED:
            value = default == "true"
        elif kind in ("int", "num") and default != REQUIRED:
            value = int(default)
        typ: Any = kind if kind in ("id", "str", "int", "num", "bool") else tuple(kind.split("|"))
        out.append((key, typ, value, int(lo), int(hi)))
    return out


_TYPES = {"int": "integer", "num": "number", "str": "string", "bool": "boolean", "id": "id"}


def test_config_table_is_the_schema() -> None:
    """ota.md 4.7 lists every key of the one schema, with its type, default and range."""
    rows = {r[0].strip("`"): r for r in table(_ota("4.7"))}
    entries = _schema()
    assert list(rows) == [k[0] for k in entries]
    for key, kind, default, lo, hi in entries:
        _, typ, dflt, rng, _meaning = rows[key]
        want = " ".join(f"`{v}`" for v in kind) if isinstance(kind, tuple) else _TYPES[kind]
        assert typ == want, key
        shown = "\u2013" if default is None else str(default).lower() if kind == "bool" else str(default)
        assert dflt == ("required" if default is REQUIRED else shown), key
        assert rng == ("" if kind == "bool" or isinstance(kind, tuple) else f"{lo}..{hi}"), key
    assert [k[4] for k in entries if k[0] == "ota_chunk"] == [otaproto.MAX_CHUNK]


def _module_of(path: Path) -> Any:
    import importlib

    rel = path.relative_to(PB.parent.parent).with_suffix("").as_posix().replace("/", ".")
    return importlib.import_module(rel)


def _defaults_in_code() -> dict[str, set[Any]]:
    """Every default the modules give a setting where they read it: config.get("key", default)."""
    found: dict[str, set[Any]] = {}
    for path in PB.rglob("*.py"):
        module = None
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr != "get" or len(node.args) != 2 or not isinstance(node.args[0], ast.Constant):
                continue
            receiver = ast.unparse(node.func.value)
            if receiver not in ("config", "cfg", "b", "self.config", "device.config", "d.config"):
                continue
            arg = node.args[1]
            if isinstance(arg, ast.Constant):
                value = arg.value
            elif isinstance(arg, ast.Name):
                module = module or _module_of(path)
                value = getattr(module, arg.id)
            else:
                continue  # (the agent's, checked by its attributes below)
            found.setdefault(node.args[0].value, set()).add(value)
    return found


def test_every_default_in_the_code_is_the_schemas(tmp_path: Path) -> None:
    """The schema is where a setting's default is decided: each module that
    reads one where it uses it gives it the schema's default."""
    schema = {k[0].split(".")[-1]: k[2] for k in _schema()}
    found = _defaults_in_code()
    agent = _agent(tmp_path)
    for key in (
        "ota_chunk",
        "ota_window",
        "ota_timeout_ms",
        "ota_tries",
        "ota_deadline_s",
        "ota_battery_min",
    ):
        found.setdefault(key, set()).add(getattr(agent, key[4:]))
    for key, values in found.items():
        assert values == {schema[key]}, (
            f"{key}: the code's default {values} is not the schema's {schema[key]}"
        )
    read_with_a_default = {k for k, d in schema.items() if d not in (None, REQUIRED)} - {"v"}
    assert read_with_a_default <= set(found), (
        f"read nowhere with their default: {read_with_a_default - set(found)}"
    )


def test_a_bad_config_stops_the_boot_naming_the_key() -> None:
    good = {"device": "th-1", "model": "thermostat", "board": "b", "broker": {"host": "h"}}
    assert check_config(dict(good)) == good
    for bad, words in (
        ({"ota_chunk": 8192}, "'ota_chunk' must be an integer within 64..4096"),
        ({"ota_chnk": 1024}, "unknown key 'ota_chnk'"),
        ({"broker": {"host": "h", "port": "1883"}}, "'broker.port' must be an integer"),
        ({"broker": {"host": "h", "prot": 1}}, "unknown key 'broker.prot'"),
        ({"device": "TH 1"}, "'device' must be 1-32 of a-z 0-9 - _"),
        ({"ota_mode": "fast"}, "'ota_mode' must be one of lean"),
        ({"sample_ms": True}, "'sample_ms' must be an integer"),
        ({"broker": {"port": 1883}}, "'broker.host' is required"),
        ({"broker": "h"}, "'broker' must be an object"),
        ({"v": 2}, "'v' must be an integer within 1..1, not 2"),
        ({"ota_trial_s": float("nan")}, "'ota_trial_s' must be a number within 0..86400"),
        ({"hal": "x" * 17}, "'hal' must be a string of 1-16 characters"),
        ({"broker": {"host": "h", "clean": 1}}, "'broker.clean' must be true or false, not 1"),
        # keys that would match more than a key in the schema's text
        ({"device id ! 1 32\nmodel": 1}, "unknown key"),
        ({"broker": {"host": "h", "port 1883 1 65535\nbroker.user": 1}}, "unknown key"),
        ({"broker.host": "h"}, "unknown key 'broker.host'"),
        ({"": 1}, "unknown key ''"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)):
            check_config({**good, **bad})
    with pytest.raises(ConfigError, match="'model' is required"):
        check_config({"device": "th-1", "board": "b", "broker": {"host": "h"}})


def _code_paths() -> set[str]:
    """The device's update file names, as their owners name them: pb/ota/flash.py,
    and the boot loader for the pointer and what it keeps (firmware/loader.py)."""
    out: set[str] = set()
    for value in [*module_strings(flash).values(), *module_strings(loader).values()]:
        for v in value if isinstance(value, tuple) else (value,):
            if v.startswith(("ota/", "data/")) or v == flash.FACTORY:
                out.add(v)
    return out


def test_flash_paths_have_one_owner() -> None:
    """No firmware module but pb/ota/flash.py spells a path of 4.8 out."""
    owner = PB / "ota" / "flash.py"
    folders = {"ota/stage", "ota/a", "ota/b"}
    # copies where loading pb/ota/flash.py costs more RAM than there is, each checked
    # equal to flash.py's (tests/firmware/test_module_lists.py)
    copies = {PB / "hello.py": {"ota/images.json", "data/hello.json"}}
    for path in PB.rglob("*.py"):
        if path == owner:
            continue
        strays = [
            s
            for s in all_strings(path)
            if (re.search(r"(ota|data)/[a-z_]+\.json$", s) or s in folders) and s not in copies.get(path, ())
        ]
        assert not strays, f"{path.relative_to(PB)} names flash paths itself: {strays}"


def test_only_the_flash_layout_writes_the_pointer() -> None:
    for path in PB.rglob("*.py"):
        if path.name == "flash.py":
            continue
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        where = path.relative_to(PB)
        assert "POINTER" not in names and "write_pointer" not in defined, f"{where} handles the pointer file"
        assert not [x for x in all_strings(path) if "active.json" in x], f"{where} names the pointer file"


def _documented_paths() -> set[str]:
    paths = set()
    for row in table(_ota("4.8")):
        for name in code_names(row[0]):
            paths.add(name.rstrip("/"))
    return paths


def test_flash_layout_names_every_file_the_update_code_uses() -> None:
    documented = _documented_paths()
    missing = _code_paths() - documented
    assert not missing, f"files the code uses that ota.md 4.8 does not list: {missing}"
    code = _code_paths()
    stray = {p for p in documented if p.startswith("ota/") and p not in code}
    assert not stray, f"ota.md 4.8 lists update files the code does not use: {stray}"


def test_power_cut_table_lists_exactly_the_fault_points() -> None:
    points = set()
    for path in PB.rglob("*.py"):
        points |= string_args(path, "fault", 0) | string_args(path, "fault_point", 0)
    rows = [r[0].strip("`") for r in table(_ota("4.9"))]
    assert len(rows) == len(set(rows))
    assert set(rows) == points


def _limit_sources() -> dict[str, Any]:
    return {
        "trust.MAX_ENVELOPE": trust.MAX_ENVELOPE,
        "trust.MAX_SIGNATURES": trust.MAX_SIGNATURES,
        "trust.MAX_SENT_ROOT": trust.MAX_SENT_ROOT,
        "trust.MAX_FILES": trust.MAX_FILES,
        "trust.MAX_PATH": trust.MAX_PATH,
        "image.MAX_IMAGE": device_image.MAX_IMAGE,
        "image.MAX_SEGMENT": device_image.MAX_SEGMENT,
        "image.FRAME": device_image.FRAME,
        "transfer.MAX_CHUNK": otaproto.MAX_CHUNK,
        "transfer.CHUNK_HEADER": otaproto.CHUNK_HEADER,
        "transfer.MAX_OBJECTS": otaproto.MAX_OBJECTS,
        "transfer.MAX_WINDOW": otaproto.MAX_WINDOW,
        "download._WBITS": pb_ota._WBITS,
        "loader.MAX_TRIAL_BOOTS": loader.MAX_TRIAL_BOOTS,
        "install._MAX_INSTALLS": install._MAX_INSTALLS,
        "loader.MAX_REPORTS": loader.MAX_REPORTS,
        "updates._MAX_ERROR": gw_updates._MAX_ERROR,
        "updates.MAX_REASON": gw_updates.MAX_REASON,
        "updater.OUTBOX": gw_updater.OUTBOX,
        "updater.OUTBOX_PER_DEVICE": gw_updater.OUTBOX_PER_DEVICE,
        "updates.DEFAULT_DEADLINE_S": gw_updates.DEFAULT_DEADLINE_S,
        "updates.DEFAULT_FRESHNESS_TTL_S": gw_updates.DEFAULT_FRESHNESS_TTL_S,
        "runtime.MAX_PACKET": runtime.MAX_PACKET,
        "clock.MAX_STATEMENT": clock.MAX_STATEMENT,
        "clock.TIME_INTERVAL_S": gw_clock.TIME_INTERVAL_S,
    }


def test_limits_table_matches_the_code() -> None:
    sources = _limit_sources()
    documented = {r[2].strip("`"): float(r[1]) for r in table(_ota("4.10"))}
    assert set(documented) == set(sources), "the limits table and the checked constants differ"
    for name, value in documented.items():
        assert value == sources[name], f"{name} is {sources[name]} in the code, {value} in ota.md"


def test_limits_that_live_in_two_places_agree() -> None:
    assert ota_release.ZLIB_WBITS == pb_ota._WBITS
    assert ota_image.FRAME == device_image.FRAME and ota_image.SEGMENT <= device_image.MAX_SEGMENT
    assert "max_packet=wire.MAX_PACKET" in (PB / "ota" / "update_mode.py").read_text()
    assert runtime.MAX_PACKET is wire.MAX_PACKET
    assert keyword_values(runtime, "MQTTClient", "max_packet") == []  # it passes runtime.MAX_PACKET by name
    assert gw_updates.DEFAULT_DEADLINE_S == 15 * 60 and "15 minutes" in OTA


# ---- security.md ------------------------------------------------------------------------------

ATTACK_TESTS = (
    "test_tampered_file",
    "test_tampered_manifest",
    "test_signature_by_unknown_key",
    "test_lower_release_counter",
    "test_stale_freshness",
    "test_manifest_for_another_model",
    "test_path_escape",
    "test_endless_data",
    "test_mix_and_match",
    "test_truncated_chunk_stream",
    "test_duplicated_chunk_stream",
    "test_an_image_that_is_not_the_one_signed_is_never_booted",
)
ATTACKS_FILE = "tests/system/test_ota_attacks.py"
# attacks whose test lives beside the feature it attacks
ATTACK_FILES = {"test_an_image_that_is_not_the_one_signed_is_never_booted": "tests/system/test_ota_image.py"}


@pytest.mark.parametrize("name", ATTACK_TESTS)
def test_security_md_names_every_attack_test(name: str) -> None:
    # the tests may not exist yet: the doc must name them all the same
    assert f"`{ATTACK_FILES.get(name, ATTACKS_FILE)}::{name}`" in SECURITY


def test_security_md_has_one_section_per_attack() -> None:
    attacks = section(SECURITY, "3. Attacks", "security.md")
    headings = [line for line in attacks if line.startswith("### ")]
    assert len(headings) == len(ATTACK_TESTS)
    for heading in headings:
        body = section(SECURITY, heading.lstrip("# ").strip(), "security.md")
        text = " ".join(body)
        named = [n for n in ATTACK_TESTS if f"{ATTACK_FILES.get(n, ATTACKS_FILE)}::{n}`" in text]
        assert len(named) == 1, f"{heading}: names {named}"
        assert "**Stopped by**" in text and "**Test**" in text, heading


DEVICE_ATTACKS_FILE = "tests/system/test_device_attacks.py"


def test_security_md_has_one_section_per_attack_of_a_compromised_device() -> None:
    written = set(re.findall(r"^def (test_\w+)\(", (ROOT / DEVICE_ATTACKS_FILE).read_text(), re.M))
    attacks = section(SECURITY, "6. One compromised device", "security.md")
    headings = [line for line in attacks if line.startswith("### ")]
    named: set[str] = set()
    for heading in headings:
        text = " ".join(section(SECURITY, heading.lstrip("# ").strip(), "security.md"))
        assert "**Stopped by**" in text and "**Test**" in text, heading
        here = {n for n in written if f"{DEVICE_ATTACKS_FILE}::{n}`" in text}
        assert here, f"{heading} names none of {DEVICE_ATTACKS_FILE}'s tests"
        named |= here
    assert named == written, f"attack tests not in security.md 6: {written - named}"


def _referenced_tests(text: str) -> set[tuple[str, str]]:
    return set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text))


def _test_exists(path: str, name: str) -> bool:
    file = ROOT / path
    if not file.is_file():
        return False
    return re.search(rf"^(async )?def {name}\(", file.read_text(), re.M) is not None


def test_every_test_the_docs_name_exists() -> None:
    refs = _referenced_tests(SECURITY) | _referenced_tests(OTA) | _referenced_tests(PROTOCOL)
    assert refs
    # the attack tests were written alongside the doc: looked for only once their file exists
    attacks_written = (ROOT / ATTACKS_FILE).is_file()
    checked = [(p, n) for p, n in sorted(refs) if p != ATTACKS_FILE or attacks_written]
    missing = [f"{p}::{n}" for p, n in checked if not _test_exists(p, n)]
    assert not missing, f"docs name tests that do not exist: {missing}"


def test_trust_codes_table_is_what_the_code_raises() -> None:
    documented = {r[0].strip("`") for r in table(section(SECURITY, "2. Trust codes", "security.md"))}
    raised = (
        string_args(trust, "TrustError", 0)
        | string_args(install, "TrustError", 0)
        | string_args(forms, "TrustError", 0)
    )
    assert documented == raised
    # and the codes the TrustError docstring promises
    doc = str(TrustError.__doc__)
    promised = set(re.findall(r"\b[a-z_]+\b", doc.split("docs/security.md):")[1]))
    assert raised <= promised


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["device", "model", "board", "broker", "v", "ota_chunk", "ota_mode", "x", ""])
        | st.text(max_size=12),
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats()
        | st.text(max_size=40)
        | st.dictionaries(
            st.sampled_from(["host", "port", "clean", "x"]) | st.text(max_size=8), st.integers() | st.text()
        ),
        max_size=8,
    )
)
def test_any_config_is_accepted_or_refused_with_a_config_error(raw: dict[str, Any]) -> None:
    try:
        assert check_config(raw) is raw
    except ConfigError as exc:
        assert str(exc).startswith("config: ")
