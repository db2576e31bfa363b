"""The device's update agent (firmware/pb/ota.py) driven directly under
CPython, for what a gateway may answer that the system tests cannot
easily make it say."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from firmware.pb import ota as pb_ota
from firmware.pb import otaproto
from ota import keys as ota_keys
from ota.envelope import sign_envelope


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

    def request(uid: str, obj: str, off: int, length: int, seq: int) -> None:
        tag = bytes.fromhex(digest)[:8]
        chunk = otaproto.encode_chunk(seq, off, error_text, tag, error=True)
        asyncio.get_running_loop().call_soon(agent.on_chunk, memoryview(chunk))

    agent = pb_ota.Agent(
        str(tmp_path / "dev"),
        "thermostat",
        1,
        dict,
        request,
        reports.append,
        time.time,
        lambda: True,
        lambda name: None,
    )
    pb_ota.configure(agent, {"device": "th-1"}, {})
    agent.once = True
    offer = {"v": 1, "id": uid, "manifest": digest, "size": len(manifest), "freshness": json.loads(fresh)}
    agent.on_offer(json.dumps(offer).encode())
    await asyncio.wait_for(agent.run(), 10)
    return reports[-1]


async def test_an_error_chunk_fails_the_update_with_the_gateways_words(tmp_path: Path) -> None:
    last = await _update_answered_with(tmp_path, "no such object: é".encode())
    assert (last["state"], last["reason"]) == ("failed", "gateway: no such object: é")
    assert not (tmp_path / "dev" / pb_ota.JOB).exists()


async def test_an_error_chunk_not_in_utf8_still_fails_the_update_with_a_reason(tmp_path: Path) -> None:
    last = await _update_answered_with(tmp_path, b"\xff\xfe bad \xc3")
    assert last["state"] == "failed"
    assert last["reason"] == "gateway: an error the gateway could not put in UTF-8"
