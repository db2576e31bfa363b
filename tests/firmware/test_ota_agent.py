"""The device's update agent (firmware/pb/ota/download.py) driven directly under
CPython, for what a gateway may answer that the system tests cannot
easily make it say."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from firmware.pb.errors import HalError, ProtocolError
from firmware.pb.hal import Hal
from firmware.pb.ota import download as pb_ota
from firmware.pb.ota import flash
from firmware.pb.peer import ota_transfer as otaproto
from gateway.ingest import Rejected, classify_ota
from ota import keys as ota_keys
from ota.envelope import sign_envelope

from ..support.wait import async_wait_for


async def _update_answered_with(tmp_path: Path, error_text: bytes) -> dict[str, Any]:
    """Offers an update whose manifest request the gateway answers with an
    error chunk of error_text; returns the agent's last report."""
    keys = ota_keys.keygen(tmp_path / "keys")
    manifest = sign_envelope({"model": "thermostat", "counter": 2, "files": []}, [keys.release_key()])
    digest = hashlib.sha256(manifest).hexdigest()
    uid = "5f2a9c01b7e4"
    fresh = ota_keys.freshness(keys, "thermostat", 2, digest, 3600, time.time(), device="th-1", update=uid)
    (tmp_path / "dev" / "ota").mkdir(parents=True)
    reports: list[dict[str, Any]] = []
    agent: pb_ota.Agent

    def request(msg: dict[str, Any]) -> None:
        tag = bytes.fromhex(digest)[:8]
        chunk = otaproto.encode_chunk(msg["s"], 0, 0, 0, error_text, tag, error=True)
        asyncio.get_running_loop().call_soon(agent.on_chunk, memoryview(chunk))

    agent = pb_ota.Agent(
        str(tmp_path / "dev"),
        "thermostat",
        1,
        request,
        reports.append,
        time.time,
        lambda: True,
        lambda name: None,
    )
    pb_ota.configure(agent, {"device": "th-1"}, Hal({}))
    agent.once = True
    offer = {"v": 1, "id": uid, "manifest": digest, "size": len(manifest), "freshness": json.loads(fresh)}
    agent.on_offer(json.dumps(offer).encode())
    await asyncio.wait_for(agent.run(), 10)
    return reports[-1]


async def test_an_error_chunk_fails_the_update_with_the_gateways_words(tmp_path: Path) -> None:
    last = await _update_answered_with(tmp_path, "no such object: é".encode())
    assert (last["state"], last["reason"]) == ("failed", "gateway: no such object: é")
    assert not (tmp_path / "dev" / flash.JOB).exists()


async def test_an_error_chunk_not_in_utf8_still_fails_the_update_with_a_reason(tmp_path: Path) -> None:
    last = await _update_answered_with(tmp_path, b"\xff\xfe bad \xc3")
    assert last["state"] == "failed"
    assert last["reason"] == "gateway: an error the gateway could not put in UTF-8"


# ---- update ids and the statement's device and update ----------------------------------


@pytest.mark.parametrize("uid", ["upd-1", "5F2A9C01B7E4", "5f2a9c01b7e", "5f2a9c01b7e4a", "", "../../x", 5])
def test_an_update_id_that_is_not_12_hex_digits_is_rejected_at_both_ends(uid: object) -> None:
    offer = {"v": 1, "id": uid, "manifest": "ab" * 32, "size": 10, "freshness": {}}
    req = {"v": 1, "dev": "th-1", "id": uid, "obj": "manifest", "off": 0, "len": 512, "seq": 1}
    status = {"v": 1, "dev": "th-1", "id": uid, "state": "failed", "reason": "x"}
    for check, msg in (
        (otaproto.check_offer, offer),
        (otaproto.check_request, req),
        (otaproto.check_status, status),
    ):
        with pytest.raises(ProtocolError):
            check(msg)
    # the gateway's validation of what a device sends is the same
    for topic, msg in (("pb/th-1/ota/req", req), ("pb/th-1/ota/status", status)):
        verdict = classify_ota(topic, json.dumps(msg).encode(), False, lambda dev: dev == "th-1")
        assert isinstance(verdict, Rejected) and verdict.reason in ("bad_value", "missing_field"), verdict
    # a status about no update says "-"
    assert otaproto.check_status(status | {"id": "-"})["id"] == "-"


@pytest.mark.parametrize(
    ("device", "update", "reason"),
    [
        ("th-2", "5f2a9c01b7e4", "mismatch: the offer's freshness statement is for another device"),
        ("th-1", "0123456789ab", "mismatch: the offer's freshness statement is for another update"),
    ],
)
def test_the_first_look_refuses_a_statement_for_another_device_or_update(
    tmp_path: Path, device: str, update: str, reason: str
) -> None:
    keys = ota_keys.keygen(tmp_path / "keys")
    fresh = ota_keys.freshness(
        keys, "thermostat", 2, "ab" * 32, 3600, time.time(), device=device, update=update
    )
    reports: list[dict[str, Any]] = []
    (tmp_path / "dev" / "ota").mkdir(parents=True)
    agent = pb_ota.Agent(
        str(tmp_path / "dev"), "thermostat", 1, print, reports.append, time.time, lambda: True, print
    )
    pb_ota.configure(agent, {"device": "th-1"}, Hal({}))
    offer = {"v": 1, "id": "5f2a9c01b7e4", "manifest": "ab" * 32, "size": 10, "freshness": json.loads(fresh)}
    agent.on_offer(json.dumps(offer).encode())
    assert [(r["state"], r["id"], r["reason"]) for r in reports] == [("failed", "5f2a9c01b7e4", reason)]
    assert agent.job is None and not (tmp_path / "dev" / flash.JOB).exists()


def _manifest_on_flash(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A device folder (its root) with a release's manifest on flash, and the
    offer of it: the release adds eco/manifest.json (2 bytes, 3 as a blob)."""
    keys = ota_keys.keygen(tmp_path / "keys")
    files = [{"path": "eco/manifest.json", "size": 2, "sha256": "cd" * 32, "zsize": 3, "zsha256": "ef" * 32}]
    body = {"v": 1, "type": "release", "model": "thermostat", "version": "2", "counter": 2, "api": 1}
    manifest = sign_envelope(
        body | {"features": {"eco": {}}, "files": files, "requires": []}, [keys.release_key()]
    )
    digest = hashlib.sha256(manifest).hexdigest()
    uid = "5f2a9c01b7e4"
    fresh = ota_keys.freshness(keys, "thermostat", 2, digest, 3600, time.time(), device="th-1", update=uid)
    base = tmp_path / "dev"
    (base / flash.STAGE).mkdir(parents=True)
    (base / "ota" / "root.json").write_bytes(keys.root_bytes)
    (base / flash.STAGE / "manifest.json").write_bytes(manifest)
    offer = {"v": 1, "id": uid, "manifest": digest, "size": len(manifest), "freshness": json.loads(fresh)}
    return base, offer


async def test_staging_keeps_only_what_the_signed_manifest_sizes(tmp_path: Path) -> None:
    """A checked manifest: what the stage folder held for another update goes,
    before any blob is fetched; and past the deadline nothing more is asked."""
    base, offer = _manifest_on_flash(tmp_path)
    stage = base / flash.STAGE
    (stage / ("12" * 32 + ".z")).write_bytes(bytes(5000))  # a blob of an update replaced
    (stage / "junk").write_bytes(b"x")
    asked: list[tuple[str, list[str]]] = []  # (object, what staging held when it was asked for)
    reports: list[dict[str, Any]] = []
    agent = pb_ota.Agent(
        str(base),
        "thermostat",
        1,
        lambda m: asked.append((m["objs"][0][0], sorted(os.listdir(stage)))),
        reports.append,
        time.time,
        lambda: True,
        print,
    )
    pb_ota.configure(agent, {"device": "th-1", "ota_deadline_s": 1, "ota_timeout_ms": 100000}, Hal({}))
    agent.on_offer(json.dumps(offer).encode())
    # in the background (not update mode): the check runs in place
    task = asyncio.create_task(agent.run())
    try:
        await async_wait_for(lambda: reports[-1]["state"] == "failed", 10, what="the update ends")
    finally:
        task.cancel()
    # checked, the stray files went before the blob was asked for; nothing answered: the deadline
    assert asked and {obj for obj, _ in asked} == {"ef" * 8}
    assert asked[0][1] in (
        ["manifest.json", "need.json"],
        ["cd" * 32 + ".z", "manifest.json", "need.json"],
    ), asked[0]
    assert reports[-1]["state"] == "failed" and reports[-1]["reason"].startswith("deadline: "), reports
    assert not stage.exists() or sorted(os.listdir(stage)) in ([], ["manifest.json"])


async def test_a_check_without_ram_in_the_runtime_is_made_at_the_next_boot_before_update_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest on flash, its check finds no RAM beside the features: the
    agent asks for a reset with the job marked for update mode and for the
    boot's check, which the next boot makes (pb/prepare.py), writing the need
    list; update mode then downloads at once, with no turn that only finds
    the manifest unchecked."""
    from firmware.pb.ota import install

    base, offer = _manifest_on_flash(tmp_path)
    resets: list[bool] = []
    agent = pb_ota.Agent(str(base), "thermostat", 1, print, print, time.time, lambda: True, print)
    pb_ota.configure(agent, {"device": "th-1"}, Hal({}))
    agent.on_reset = lambda: resets.append(True)

    def no_ram(agent: Any, job: Any, mpath: str) -> None:
        raise MemoryError("memory allocation failed, allocating 4096 bytes")

    monkeypatch.setattr(install, "check_job", no_ram)
    agent.on_offer(json.dumps(offer).encode())
    await asyncio.wait_for(agent.run(), 10)
    job = json.loads((base / flash.JOB).read_text())
    assert resets == [True] and job["mode"] == "lean" and flash.to_check(job), job
    monkeypatch.undo()
    # the next boot, on its empty heap
    assert install.check_fetched(str(base), ("th-1", "thermostat", {}, 1), time.time())
    job = json.loads((base / flash.JOB).read_text())
    assert job["checked"] == offer["manifest"] and "verify" not in job and job["mode"] == "lean"
    head, entries = pb_ota.read_need(str(base), job)
    assert [e["sha256"] for e in entries] == ["cd" * 32] and head["need"] >= 2
    # and a check that passes in the runtime leaves no mark for the boot
    assert not flash.to_check(job)


def _battery_agent(tmp_path: Path, charge: list[float | None], config: dict[str, Any]) -> tuple[Any, ...]:
    """An agent on a board with a battery whose charge is charge[0] (None: the
    sensor does not answer), offered an update; nothing answers its requests."""
    keys = ota_keys.keygen(tmp_path / "keys")
    uid = "5f2a9c01b7e4"
    fresh = ota_keys.freshness(keys, "shirt", 2, "ab" * 32, 3600, time.time(), device="sh-1", update=uid)
    (tmp_path / "dev" / "ota").mkdir(parents=True)
    asked: list[str] = []
    reports: list[dict[str, Any]] = []

    class Board(Hal):  # type: ignore[misc]
        def read(self, name: str) -> float:
            if charge[0] is None:
                raise HalError("sensor battery does not answer")
            return charge[0]

    board = Board({"capabilities": {"battery": {"kind": "sensor", "min": 0, "max": 100}}})
    agent = pb_ota.Agent(
        str(tmp_path / "dev"),
        "shirt",
        1,
        lambda m: asked.append(m["objs"][0][0]),
        reports.append,
        time.time,
        lambda: True,
        print,
    )
    pb_ota.configure(agent, {"device": "sh-1", "ota_timeout_ms": 100000, **config}, board)
    offer = {"v": 1, "id": uid, "manifest": "ab" * 32, "size": 10, "freshness": json.loads(fresh)}
    agent.on_offer(json.dumps(offer).encode())
    return agent, asked, reports


@pytest.mark.long
async def test_a_low_battery_defers_the_update_until_it_is_charged_past_the_hysteresis(
    tmp_path: Path,
) -> None:
    charge: list[float | None] = [18.4]
    agent, asked, reports = _battery_agent(tmp_path, charge, {"ota_deadline_s": 2})
    task = asyncio.create_task(agent.run())
    try:
        await async_wait_for(lambda: reports[-1]["state"] == "deferred", 5, what="deferred")
        assert reports[-1]["reason"] == "battery: 18% is below 30%" and reports[-1]["counter"] == 2
        assert [r["state"] for r in reports] == ["offered", "deferred"]
        charge[0] = 32.0  # above the threshold, not yet past the hysteresis
        await asyncio.sleep(4.5)  # and past the deadline, which does not run meanwhile
        assert not asked and [r["state"] for r in reports] == ["offered", "deferred"]
        job = json.loads((tmp_path / "dev" / flash.JOB).read_bytes())
        assert job["id"] == "5f2a9c01b7e4" and job["phase"] == "downloading"
        charge[0] = 35.0
        await async_wait_for(lambda: asked == ["manifest"], 5, what="the manifest asked for")
        job = json.loads((tmp_path / "dev" / flash.JOB).read_bytes())
        assert job["paused"] >= 4
    finally:
        task.cancel()
    assert "failed" not in [r["state"] for r in reports]


async def test_a_battery_that_cannot_be_read_does_not_hold_an_update_back(tmp_path: Path) -> None:
    agent, asked, reports = _battery_agent(tmp_path, [None], {})
    task = asyncio.create_task(agent.run())
    try:
        await async_wait_for(lambda: asked == ["manifest"], 5, what="the manifest asked for")
    finally:
        task.cancel()
    assert [r["state"] for r in reports] == ["offered"]


async def test_a_cancel_ends_a_deferred_update(tmp_path: Path) -> None:
    agent, asked, reports = _battery_agent(tmp_path, [5.0], {})
    task = asyncio.create_task(agent.run())
    try:
        await async_wait_for(lambda: reports[-1]["state"] == "deferred", 5, what="deferred")
        agent.on_offer(json.dumps({"v": 1, "id": "5f2a9c01b7e4", "op": "cancel"}).encode())
        await async_wait_for(lambda: reports[-1]["state"] == "failed", 5, what="failed")
    finally:
        task.cancel()
    assert reports[-1]["reason"] == "cancelled by the gateway" and not asked
    assert not (tmp_path / "dev" / flash.JOB).exists()
