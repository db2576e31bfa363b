"""Online and offline, from the last will and from silence."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.broker import BrokerUrl
from gateway.cli_registry import password_hash
from gateway.errors import DeviceNotFoundError
from gateway.registry import Registry
from gateway.service import Gateway
from gateway.store import Store

from ..conftest import DbAt
from .test_ingest import hello


def state(dev: str, s: str, reason: str | None = None) -> bytes:
    msg = {"v": 1, "dev": dev, "state": s}
    if reason:
        msg["reason"] = reason
    return json.dumps(msg).encode()


async def test_will_and_silence(gw_db: Path | str) -> None:
    with Store(gw_db) as store:
        gw = Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)
        seen: list[tuple[str, str]] = []
        gw.listeners.append(lambda kind, dev, msg: seen.append((kind, dev)))
        # a state may come before its hello; it is applied when the hello arrives
        gw.handle("pb/th-1/state", state("th-1", "online"), True)
        gw.handle("pb/th-1/hello", hello("th-1", keepalive=10, telemetry_s=2), True)
        d = store.device("th-1")
        assert d is not None and d.online
        # the last will
        gw.handle("pb/th-1/state", state("th-1", "offline", "lost"), False)
        d = store.device("th-1")
        assert d is not None and not d.online and d.state_reason == "lost"
        gw.handle("pb/th-1/state", state("th-1", "online"), False)
        assert gw.is_online("th-1")
        # silence past max(3 x telemetry, 1.5 x keepalive) + 2 s = 17 s means gone
        last = store.device("th-1").last_seen  # type: ignore[union-attr]
        gw.check_liveness(last + 16)
        assert gw.is_online("th-1")
        gw.check_liveness(last + 18)
        d = store.device("th-1")
        assert d is not None and not d.online and d.state_reason == "silent"
        assert ("offline", "th-1") in seen


def telemetry(dev: str, seq: int) -> bytes:
    msg = {"v": 1, "dev": dev, "seq": seq, "ts": 1767226020.0 + seq, "sensors": {"temperature": 20.5}}
    return json.dumps(msg | {"actuators": {}, "features": {}}).encode()


async def test_a_provisioned_device_is_heard_before_its_first_hello(db_at: DbAt) -> None:
    # MQTT keeps the order of one topic only: a new device's telemetry may come before its hello
    with Store(db_at()) as store:
        reg = Registry(store)
        reg.register("th-1", "thermostat", "thermostat-v1", password_hash("th-1", "pw"), 1.0)
        reg.register("th-9", "thermostat", "thermostat-v1", password_hash("th-9", "pw"), 1.0)
        reg.revoke("th-9", 2.0)
        gw = Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)
        seen: list[tuple[str, str]] = []
        gw.listeners.append(lambda kind, dev, msg: seen.append((kind, dev)))
        gw.handle("pb/th-1/telemetry", telemetry("th-1", 1), False)
        gw.handle("pb/th-1/event", b'{"v":1,"dev":"th-1","ts":1,"kind":"boot"}', False)
        # a device never provisioned, or revoked, is refused as before
        gw.handle("pb/ghost/telemetry", telemetry("ghost", 1), False)
        gw.handle("pb/th-9/telemetry", telemetry("th-9", 1), False)
        gw.flush()
        assert gw.counters["accepted"] == 2 and gw.rejects == {"unknown_device": 1, "revoked": 1}
        assert store.telemetry_count("th-1") == 1 and [e["kind"] for e in store.events("th-1")] == ["boot"]
        assert store.telemetry_count() == 1
        # not in the registry of devices until its hello: nothing is sent to it, nor counted
        assert store.device("th-1") is None and gw.stats()["devices"] == 0
        with pytest.raises(DeviceNotFoundError):
            await gw.send_command("th-1", "ping", timeout=0.1)
        # its hello registers it, online since it talked, with what it sent before kept
        gw.handle("pb/th-1/hello", hello("th-1", keepalive=10, telemetry_s=2), True)
        d = store.device("th-1")
        assert d is not None and d.online and d.state_reason == "active"
        assert gw.stats()["devices"] == 1 and gw.stats()["online"] == 1
        gw.handle("pb/th-1/telemetry", telemetry("th-1", 2), False)
        gw.flush()
        assert store.telemetry_count("th-1") == 2
        assert ("online", "th-1") in seen and seen.count(("telemetry", "th-1")) == 2


async def test_a_provisioned_device_s_will_before_its_hello_is_kept_for_it(db_at: DbAt) -> None:
    with Store(db_at()) as store:
        Registry(store).register("th-1", "thermostat", "thermostat-v1", password_hash("th-1", "pw"), 1.0)
        gw = Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)
        gw.handle("pb/th-1/telemetry", telemetry("th-1", 1), False)
        # its will, then silence past the deadline of a device that has said nothing of its periods
        gw.handle("pb/th-1/state", state("th-1", "offline", "lost"), False)
        assert not gw.is_online("th-1")
        gw.handle("pb/th-1/hello", hello("th-1", keepalive=10, telemetry_s=2), True)
        d = store.device("th-1")
        assert d is not None and not d.online


async def test_a_flood_from_an_id_never_provisioned_costs_one_registry_lookup_a_while(
    db_at: DbAt, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(db_at()) as store:
        gw = Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)
        looked: list[str] = []
        get = Registry.get
        monkeypatch.setattr(Registry, "get", lambda self, dev: looked.append(dev) or get(self, dev))
        for seq in range(1, 201):
            gw.handle("pb/ghost/telemetry", telemetry("ghost", seq), False)
        assert gw.rejects == {"unknown_device": 200} and looked == ["ghost"]
        # provisioned meanwhile: heard from its hello on (which needs no registry), at once
        Registry(store).register("ghost", "thermostat", "thermostat-v1", password_hash("ghost", "pw"), 1.0)
        gw.handle("pb/ghost/hello", hello("ghost", keepalive=10, telemetry_s=2), True)
        gw.handle("pb/ghost/telemetry", telemetry("ghost", 201), False)
        gw.flush()
        assert store.telemetry_count("ghost") == 1
        # and before a hello, once what was believed of it has lapsed
        Registry(store).register("late-1", "thermostat", "thermostat-v1", password_hash("late-1", "pw"), 1.0)
        gw._unregistered["late-1"] = time.monotonic() - 1  # (found unknown over 5 s ago)
        gw.handle("pb/late-1/telemetry", telemetry("late-1", 1), False)
        gw.flush()
        assert store.telemetry_count("late-1") == 1
