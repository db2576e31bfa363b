"""The update endpoints of the gateway's HTTP API, against a gateway running
in this process on the session's Mosquitto: release uploads (tar), lookups,
starting an update and following it, and every error as JSON with a code."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import api
from gateway.archive import TAR_TYPE, pack_release
from gateway.paths import firmware_dir
from ota.keys import Keys
from ota.release import Release, build

from ..support.ota import OtaDevice
from ..support.wait import async_wait_for
from .conftest import MakeRelease, Running, StartGateway

MakeDevice = Callable[..., OtaDevice]


class Api:
    def __init__(self, r: Running, session: aiohttp.ClientSession) -> None:
        self.r = r
        self.session = session

    async def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = self.r.headers() | (headers or {})
        async with self.session.request(method, self.r.url + path, headers=headers, **kw) as resp:
            return resp.status, await resp.json()

    async def publish(self, release: Release) -> tuple[int, Any]:
        return await self.call(
            "POST", "/api/v1/releases", data=pack_release(release), headers={"Content-Type": TAR_TYPE}
        )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def error(answer: tuple[int, Any]) -> tuple[int, str]:
    status, body = answer
    return status, body["error"]["code"]


async def test_a_gateway_without_keys_says_how_to_give_it_some(
    start_gateway: StartGateway, session: aiohttp.ClientSession, release: Release
) -> None:
    a = Api(await start_gateway(None), session)
    for method, path in (
        ("GET", "/api/v1/releases"),
        ("GET", "/api/v1/releases/thermostat@2"),
        ("GET", "/api/v1/updates/0123456789ab"),
        ("POST", "/api/v1/devices/th-1/update"),
        ("GET", "/api/v1/devices/th-1/updates"),
    ):
        status, body = await a.call(method, path, json={"release": "x"})
        assert (status, body["error"]["code"]) == (503, "ota_disabled")
        assert body["error"]["message"] == "this gateway has no keys: start it with --keys DIR"
    assert error(await a.publish(release)) == (503, "ota_disabled")
    assert (await a.call("GET", "/api/v1/stats"))[1]["ota"]["enabled"] is False


async def test_releases_are_uploaded_listed_and_found(
    start_gateway: StartGateway, session: aiohttp.ClientSession, keys: Keys, make_release: MakeRelease
) -> None:
    a = Api(await start_gateway(keys), session)
    rel = make_release(2)
    status, body = await a.publish(rel)
    assert status == 201 and body["new"] is True
    assert (body["id"], body["ref"], body["version"], body["files"]) == (
        rel.sha256,
        "thermostat@2",
        "2026.11.2",
        len(rel.files),
    )
    status, again = await a.publish(rel)
    assert status == 200 and again["new"] is False and again["id"] == rel.sha256
    await a.publish(make_release(3))
    status, listed = await a.call("GET", "/api/v1/releases")
    assert status == 200 and [r["ref"] for r in listed] == ["thermostat@2", "thermostat@3"]
    assert (await a.call("GET", "/api/v1/releases?model=shirt"))[1] == []
    for ref in (rel.sha256, rel.sha256[:8], "thermostat@2", "2026.11.2"):
        status, found = await a.call("GET", f"/api/v1/releases/{ref}")
        assert status == 200 and found["id"] == rel.sha256
        assert [f["path"] for f in found["files_list"]] == [f.path for f in rel.files]
    assert error(await a.call("GET", "/api/v1/releases/thermostat@9")) == (404, "unknown_release")


async def test_a_release_that_does_not_verify_is_refused_with_its_trust_code(
    start_gateway: StartGateway,
    session: aiohttp.ClientSession,
    keys: Keys,
    make_release: MakeRelease,
    tmp_path: Any,
) -> None:
    from ota.keys import keygen

    a = Api(await start_gateway(keys), session)
    status, body = await a.publish(make_release(2, signer=keygen(tmp_path / "other")))
    assert (status, body["error"]["code"]) == (422, "unknown_key")
    assert "release refused: unknown_key" in body["error"]["message"]
    rel = make_release(3)
    blob = rel.blob_path(rel.files[0])
    blob.write_bytes(blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 1]))
    assert error(await a.publish(rel)) == (422, "mismatch")
    assert (await a.call("GET", "/api/v1/releases"))[1] == []


async def test_bad_uploads_are_refused(
    start_gateway: StartGateway,
    session: aiohttp.ClientSession,
    keys: Keys,
    release: Release,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = Api(await start_gateway(keys), session)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../escape")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    tar_type = {"Content-Type": TAR_TYPE}
    status, body = await a.call("POST", "/api/v1/releases", data=buf.getvalue(), headers=tar_type)
    assert (status, body["error"]["code"]) == (422, "bad_archive")
    assert "leaves the release folder" in body["error"]["message"]
    bad_type = await a.call(
        "POST", "/api/v1/releases", data=pack_release(release), headers={"Content-Type": "application/json"}
    )
    assert error(bad_type) == (415, "bad_request")
    monkeypatch.setattr(api, "MAX_ARCHIVE", 1000)
    assert error(await a.publish(release)) == (413, "too_large")


async def test_an_update_is_started_and_followed(
    start_gateway: StartGateway,
    session: aiohttp.ClientSession,
    keys: Keys,
    release: Release,
    ota_devices: MakeDevice,
) -> None:
    r = await start_gateway(keys)
    a = Api(r, session)
    dev = ota_devices()
    await asyncio.to_thread(dev.hello)
    await async_wait_for(lambda: r.gw.is_online(dev.id), 10)
    await a.publish(release)
    status, u = await a.call("POST", f"/api/v1/devices/{dev.id}/update", json={"release": "thermostat@2"})
    assert status == 201 and u["state"] == "offered" and u["device"] == dev.id and u["success"] is False
    offer = await asyncio.to_thread(dev.offer)
    assert offer["id"] == u["id"]
    dev.status(u["id"], "downloading", bytes=100, total=1000)
    await async_wait_for(lambda: r.gw.ota.get(u["id"]).bytes == 100, 5)
    status, now = await a.call("GET", f"/api/v1/updates/{u['id']}")
    assert status == 200 and (now["state"], now["bytes"], now["total"]) == ("downloading", 100, 1000)
    status, listed = await a.call("GET", f"/api/v1/devices/{dev.id}/updates")
    assert status == 200 and [x["id"] for x in listed] == [u["id"]]
    dev.status(u["id"], "rolled_back", reason="self-test of thermostat failed")
    await async_wait_for(lambda: r.gw.ota.get(u["id"]).ended, 5)
    _, done = await a.call("GET", f"/api/v1/updates/{u['id']}")
    assert (done["state"], done["reason"], done["success"], done["ended"]) == (
        "rolled_back",
        "self-test of thermostat failed",
        False,
        True,
    )


async def test_update_errors_are_json_with_codes(
    start_gateway: StartGateway,
    session: aiohttp.ClientSession,
    keys: Keys,
    release: Release,
    ota_devices: MakeDevice,
) -> None:
    r = await start_gateway(keys)
    a = Api(r, session)
    shirt = ota_devices("sh")
    await asyncio.to_thread(shirt.hello, model="shirt")
    await async_wait_for(lambda: r.gw.is_online(shirt.id), 10)
    await a.publish(release)
    post = f"/api/v1/devices/{shirt.id}/update"
    assert error(await a.call("POST", post, json={"release": "thermostat@2"})) == (409, "wrong_model")
    assert error(await a.call("POST", post, json={"release": "thermostat@7"})) == (404, "unknown_release")
    assert error(await a.call("POST", post, json={"release": 5})) == (400, "bad_request")
    assert error(await a.call("POST", post, json={"release": "x", "force": "yes"})) == (400, "bad_request")
    assert error(await a.call("POST", post, data=b"{nope")) == (400, "bad_request")
    nobody = "/api/v1/devices/nobody-1/update"
    assert error(await a.call("POST", nobody, json={"release": "thermostat@2"})) == (404, "unknown_device")
    assert error(await a.call("GET", "/api/v1/devices/nobody-1/updates")) == (404, "unknown_device")
    assert error(await a.call("GET", "/api/v1/updates/0123456789ab")) == (404, "unknown_update")
    async with session.get(r.url + "/api/v1/releases") as resp:  # no token
        assert resp.status == 401


async def test_a_release_s_notes_are_published_with_it_and_shown(
    start_gateway: StartGateway, session: aiohttp.ClientSession, keys: Keys, tmp_path: Path
) -> None:
    a = Api(await start_gateway(keys), session)
    notes = "Eco pre-heats while energy is cheap.\nIt publishes the hour's price."
    thermostat = firmware_dir() / "features" / "thermostat"
    rel = build("thermostat", [thermostat], "2.0", tmp_path / "r", 2, ("py",), keys, notes=notes)
    status, body = await a.publish(rel)
    assert status == 201, body
    status, found = await a.call("GET", "/api/v1/releases/thermostat@2")
    assert status == 200 and found["notes"] == notes
    # read from the gateway's blob and checked against the signed hashes each time
    stored = a.r.gw.ota.releases.get(rel.sha256)
    assert stored is not None and stored.notes_entry is not None
    a.r.gw.ota.releases.blob_path(stored.notes_entry.zsha256).write_bytes(b"tampered")
    assert error(await a.call("GET", "/api/v1/releases/thermostat@2")) == (422, "mismatch")
