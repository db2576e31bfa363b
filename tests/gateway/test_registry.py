"""What provisioning records of a device (gateway/registry.py), its
revocation and restoration: the registry's rules, the form of the hash it
writes into the broker's password file (a property test: nothing else gets
in), the API, and a real gateway refusing a revoked device's messages and
sending it nothing, on the session's Mosquitto."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli_registry import password_hash
from gateway.errors import DeviceOfflineError
from gateway.registry import Registry, RegistryError, valid_hash
from gateway.store import Store

from ..conftest import DbAt
from ..support.wait import async_wait_for
from .conftest import StartGateway
from .test_hostile_device import Device, devices, telemetry  # noqa: F401 (a fixture)


@pytest.fixture
def registry(db_at: DbAt) -> Iterator[Registry]:
    with Store(db_at()) as store:
        yield Registry(store)


def test_a_device_is_registered_revoked_and_restored(registry: Registry) -> None:
    h = password_hash("th-1", "its password")
    g0 = registry.generation()
    r = registry.register("th-1", "thermostat", "thermostat-v1", h, 10.0)
    assert (r.device, r.model, r.board, r.password_hash, r.revoked) == (
        "th-1",
        "thermostat",
        "thermostat-v1",
        h,
        None,
    )
    assert registry.generation() > g0 and "password_hash" not in r.as_dict()
    g1 = registry.generation()
    assert registry.revoke("th-1", 20.0).revoked == 20.0 and registry.revoked() == {"th-1"}
    assert registry.revoke("th-1", 30.0).revoked == 20.0  # (revoked once: its time stays)
    # provisioned again, it stays revoked: only restore lets it back
    registry.register("th-1", "thermostat", "thermostat-v1", password_hash("th-1", "new"), 40.0)
    assert registry.revoked() == {"th-1"}
    assert registry.restore("th-1").revoked is None and registry.revoked() == set()
    assert registry.generation() > g1
    with pytest.raises(RegistryError, match="never registered"):
        registry.revoke("th-9", 1.0)


@pytest.mark.parametrize(
    ("dev", "model", "board", "message"),
    [
        ("TH 1", "thermostat", "thermostat-v1", "device id"),
        ("gateway", "thermostat", "thermostat-v1", "reserved"),
        ("homeassistant", "thermostat", "thermostat-v1", "reserved"),
        ("th-1", "toaster", "thermostat-v1", "toaster"),
        ("th-1", "thermostat", "shirt-v1", "is a shirt"),
    ],
)
def test_a_malformed_registration_is_refused(
    registry: Registry, dev: str, model: str, board: str, message: str
) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.register(dev, model, board, password_hash("th-1", "pw"), 1.0)
    assert registry.all() == []


@settings(max_examples=200)
@given(
    st.text(max_size=100)
    | st.text(alphabet="0123456789abcdefABCDEF\n ", min_size=60, max_size=68)
    | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
)
def test_nothing_but_64_lowercase_hex_digits_is_taken_for_a_link_key(text: str) -> None:
    """The key a device on a line proves itself with (protocol.md 17):
    anything else, a digit short or long, upper case, a line break, is
    refused, and nothing of the device is recorded."""
    import re
    import sqlite3
    import tempfile

    from gateway.store import Store

    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "gw.db") as store:
        registry = Registry(store)
        ok = re.fullmatch(r"[0-9a-f]{64}", text) is not None
        try:
            registry.register("th-1", "thermostat", "thermostat-v1", password_hash("th-1", "pw"), 1.0, text)
        except RegistryError as exc:
            assert not ok and "link_key" in str(exc)
            assert registry.all() == []
        else:
            assert ok
            got = store.db.execute("SELECT link_key FROM device_registry").fetchone()
            assert isinstance(got, sqlite3.Row) and got[0] == text


@given(st.text(max_size=200))
def test_nothing_but_a_mosquitto_hash_reaches_the_password_file(text: str) -> None:
    # a line of the password file: a newline or a colon would add a user of its own
    if valid_hash(text):
        assert "\n" not in text and ":" not in text and text.startswith("$7$")


@given(st.text(min_size=1, max_size=40), st.sampled_from(["\n", ":", "\r", " ", "\x00"]))
def test_a_hash_with_a_line_break_or_a_colon_is_refused(password: str, bad: str) -> None:
    h = password_hash("th-1", password)
    assert valid_hash(h)
    for spoiled in (h + bad + "intruder:$7$101$x$y", bad + h, h[:20] + bad + h[20:]):
        assert not valid_hash(spoiled)


async def test_the_api_registers_and_a_revoked_device_is_refused_by_the_gateway(
    start_gateway: StartGateway,
    devices: Callable[[str], Device],  # noqa: F811
) -> None:
    r = await start_gateway()
    bad, good = devices("rv-bad"), devices("rv-good")
    await bad.register()
    await good.register()
    await async_wait_for(lambda: r.gw.is_online(bad.id) and r.gw.is_online(good.id), 10, what="both online")

    async with aiohttp.ClientSession(headers=r.headers()) as http:

        async def call(method: str, what: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, f"{r.url}/api/v1/devices/{bad.id}/{what}", json=body) as resp:
                return resp.status, await resp.json()

        h = password_hash(bad.id, "pw")
        status, _ = await call("PUT", "registration", {"model": "thermostat", "board": "thermostat-v1",
                                                       "password_hash": h + "\nx:y"})  # fmt: skip
        assert status == 400
        status, reg = await call("PUT", "registration", {"model": "thermostat", "board": "thermostat-v1",
                                                         "password_hash": h})  # fmt: skip
        assert status == 200 and reg["revoked"] is None and "password_hash" not in reg
        status, reg = await call("POST", "revoke")
        assert status == 200 and reg["revoked"] is not None
        assert not r.gw.is_online(bad.id)
        before = r.store.db.execute("SELECT count(*) FROM telemetry WHERE device = ?", (bad.id,)).fetchone()[
            0
        ]
        await bad.send("telemetry", telemetry(bad.id, 7))
        await bad.register()  # nor does a hello bring it back
        await good.send("telemetry", telemetry(good.id, 7))
        await async_wait_for(
            lambda: r.store.db.execute(
                "SELECT count(*) FROM telemetry WHERE device = ?", (good.id,)
            ).fetchone()[0],
            10,
            what="the other's telemetry stored",
        )
        await async_wait_for(lambda: r.gw.rejects.get("revoked", 0) >= 3, 10, what="its messages refused")
        after = r.store.db.execute("SELECT count(*) FROM telemetry WHERE device = ?", (bad.id,)).fetchone()[0]
        assert after == before and not r.gw.is_online(bad.id)
        with pytest.raises(DeviceOfflineError, match="revoked"):
            await r.gw.send_command(bad.id, "ping", force=True)
        status, _ = await call("POST", "restore")
        assert status == 200
        await bad.register()
        await async_wait_for(lambda: r.gw.is_online(bad.id), 10, what="back once restored")
