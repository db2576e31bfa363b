"""One test per attack (docs/security.md 6), each named after it: what an
attacker holding one device's credentials (its config.json) tries against
the real Mosquitto, configured by gateway.broker.mosquitto_config with its
real ACLs, the real gateway, and devices on the real MicroPython unix port.
Mosquitto grants a denied SUBSCRIBE and then filters delivery, and drops a
denied 3.1.1 publish silently: the tests check what is received."""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ota import keys as ota_keys
from ota.release import Release

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.mqtt import TestClient
from ..support.ota import OtaDevice
from ..support.ota_server import OtaServer, sha256
from ..support.processes import DeviceProcess, GatewayProcess
from ..support.wait import wait_for
from .conftest import assert_on_factory, offer_of, ota_device, serve
from .test_ota_attacks import blobs_of, body_of, signed_offer

pytestmark = pytest.mark.slow


def quiet(client: TestClient, seconds: float = 1.5) -> list[tuple[str, bytes, bool]]:
    """What client receives within seconds (retained messages drained first)."""
    return client.messages(seconds)


# ---- 6.1 an update the gateway never offered ---------------------------------------------


@pytest.fixture
def ota_gateway(mosquitto: Mosquitto, gateway_keys: Path, tmp_path: Path) -> Iterator[GatewayProcess]:
    """The real gateway with its keys, for this test alone: a gateway left
    running would answer the requests of the tests that play the gateway."""
    gw = GatewayProcess(
        mosquitto.gateway_url, tmp_path / "gw.db", tmp_path / "gw.log", ["--keys", str(gateway_keys)]
    )
    gw.start()
    yield gw
    gw.stop()


def test_another_devices_offer_replayed_on_own_topic(
    mosquitto: Mosquitto,
    make_device: MakeDevice,
    ota_gateway: GatewayProcess,
    keys: ota_keys.Keys,
    release2: Release,
) -> None:
    # the gateway offers release 2 to device B: a genuine offer, signed for B
    ota_gateway.cli("ota", "publish", str(release2.path))
    b_creds = make_device(mosquitto, "thermostat")  # B's side of the protocol, played by the test
    b = OtaDevice(mosquitto, b_creds.id, b_creds.password)
    a = ota_device(mosquitto, make_device, keys, start=False)
    watcher = TestClient(mosquitto, *mosquitto.operator())
    try:
        b.hello()
        wait_for(lambda: ota_gateway.device(b.id)["online"], 10, what="B online")
        ota_gateway.cli("devices", "update", b.id, "thermostat@2", "--no-wait")
        genuine = b.offer()
        assert json.loads(genuine["freshness"]["signed"])["device"] == b.id

        # A, with its own credentials, publishes B's offer on its own ota/offer topic:
        # the ACL lets a device read its ota/offer, never write it
        watcher.subscribe(f"pb/{a.id}/ota/#")
        quiet(watcher, 0.3)
        attacker = TestClient(mosquitto, a.id, a.password)
        attacker.subscribe(f"pb/{a.id}/ota/offer")
        attacker.publish(f"pb/{a.id}/ota/offer", json.dumps(genuine))
        attacker.publish(f"pb/{a.id}/ota/chunk", b"\x01" + bytes(23))
        assert quiet(attacker) == [] and quiet(watcher, 0.2) == []
        attacker.close()

        # and where the offer does reach A (its own network, or a broker that lets it
        # through), with every byte of B's release served: A refuses it at once
        a.start()
        wait_for(lambda: "booted" in a.output(), 15, what="A boots")
        replay = offer_of(release2, keys)
        replay.uid = genuine["id"]
        replay.freshness = json.dumps(genuine["freshness"]).encode()
        srv = serve(mosquitto, a, replay)
        try:
            st = srv.wait_for(("failed", "committed"), 60)
            assert st["state"] == "failed", srv.seen
            assert st["reason"] == "mismatch: the offer's freshness statement is for another device"
            time.sleep(0.5)
            assert srv.requests == 0, "A fetched bytes of an update that was not offered to it"
        finally:
            srv.close()
        assert_on_factory(a)
        # the gateway's record: the update is B's, A has none
        from gateway.client import ApiClient

        api = ApiClient.from_db(ota_gateway.db)
        assert [u["id"] for u in api.request("GET", f"/api/v1/devices/{b.id}/updates")] == [genuine["id"]]
        assert api.request("GET", f"/api/v1/devices/{a.id}/updates") == []
    finally:
        watcher.close()
        b.close()


# ---- 6.2 the update topics the other way round ------------------------------------------


def test_device_publishing_to_its_own_offer_topic_is_not_delivered(
    mosquitto: Mosquitto, make_device: MakeDevice, keys: ota_keys.Keys
) -> None:
    dev = ota_device(mosquitto, make_device, keys)  # a running device, subscribed to its ota/offer
    creds = make_device(mosquitto, "thermostat")  # the attacker's own device, not running
    watcher = TestClient(mosquitto, *mosquitto.operator())
    try:
        watcher.subscribe(f"pb/{creds.id}/#")
        quiet(watcher, 0.3)
        attacker = TestClient(mosquitto, creds.id, creds.password)
        for kind in ("ota/offer", "ota/chunk", "ota/req", "ota/status"):
            attacker.subscribe(f"pb/{creds.id}/{kind}")
        # it may write its ota/req and ota/status, not its ota/offer or ota/chunk
        offer = {"v": 1, "id": "5f2a9c01b7e4", "manifest": "ab" * 32, "size": 10, "freshness": {}}
        attacker.publish(f"pb/{creds.id}/ota/offer", json.dumps(offer))
        attacker.publish(f"pb/{creds.id}/ota/chunk", b"\x01" + bytes(23))
        status = {"v": 1, "dev": creds.id, "id": "-", "state": "failed", "reason": "x"}
        attacker.publish(f"pb/{creds.id}/ota/status", json.dumps(status))
        got = {t.rsplit("/", 2)[-2] + "/" + t.rsplit("/", 1)[-1] for t, _, _ in quiet(watcher)}
        assert got == {"ota/status"}, got
        # it may read its ota/offer and ota/chunk, not its ota/req or ota/status
        for kind in ("ota/req", "ota/status", "ota/offer"):
            watcher.publish(f"pb/{creds.id}/{kind}", b"{}", retain=False)
        received = {t.split("/", 2)[2] for t, _, _ in quiet(attacker)}
        assert received == {"ota/offer"}, received
        attacker.close()
        # and nothing reached the running device either: it reports nothing
        assert dev.running and "update" not in dev.output().split("booted", 1)[-1]
    finally:
        watcher.close()


def test_a_device_cannot_send_a_root_to_itself_or_another(
    mosquitto: Mosquitto, make_device: MakeDevice, keys: ota_keys.Keys
) -> None:
    """ota/root is the gateway's to write: a root published by a device, on
    its own topic or another's, reaches no one, and the running device
    takes none (it would reset to check it)."""
    dev = ota_device(mosquitto, make_device, keys)  # running, subscribed to its ota/root
    creds = make_device(mosquitto, "thermostat")
    watcher = TestClient(mosquitto, *mosquitto.operator())
    try:
        watcher.subscribe("pb/+/ota/root")
        quiet(watcher, 0.3)
        attacker = TestClient(mosquitto, creds.id, creds.password)
        attacker.subscribe(f"pb/{creds.id}/ota/root")
        for target in (creds.id, dev.id):
            attacker.publish(f"pb/{target}/ota/root", keys.root_bytes)
            attacker.publish(f"pb/{target}/ota/root", keys.root_bytes, retain=True)
        assert quiet(attacker) == [] and quiet(watcher, 0.2) == []
        attacker.close()
        time.sleep(0.5)
        assert dev.running and "root" not in dev.output().split("booted", 1)[-1]
    finally:
        watcher.close()


def test_a_device_cannot_send_a_time_to_itself_or_another(
    mosquitto: Mosquitto, make_device: MakeDevice, keys: ota_keys.Keys
) -> None:
    """ota/time is the gateway's to write: a genuine statement replayed by a
    device, or one a day ahead, on its own topic or another's, reaches no
    one, and the running device keeps none (ota/time.json)."""
    dev = ota_device(mosquitto, make_device, keys)  # running, subscribed to its ota/time
    creds = make_device(mosquitto, "thermostat")
    watcher = TestClient(mosquitto, *mosquitto.operator())
    try:
        watcher.subscribe("pb/+/ota/time")
        quiet(watcher, 0.3)
        attacker = TestClient(mosquitto, creds.id, creds.password)
        attacker.subscribe(f"pb/{creds.id}/ota/time")
        for target in (creds.id, dev.id):
            for t in (time.time(), time.time() + 86400):
                statement = ota_keys.time_statement(keys, target, t)
                attacker.publish(f"pb/{target}/ota/time", statement)
                attacker.publish(f"pb/{target}/ota/time", statement, retain=True)
        assert quiet(attacker) == [] and quiet(watcher, 0.2) == []
        attacker.close()
        time.sleep(0.5)
        assert dev.running and not (dev.path / "ota" / "time.json").exists()
    finally:
        watcher.close()


# ---- 6.3 knocking others off the broker ---------------------------------------------------


def _mosquitto_log(mosquitto: Mosquitto) -> str:
    return (mosquitto.dir / "mosquitto.log").read_text(errors="replace")


def test_client_id_takeover_of_a_device(
    mosquitto: Mosquitto, make_device: MakeDevice, keys: ota_keys.Keys
) -> None:
    victim = ota_device(mosquitto, make_device, keys)
    creds = make_device(mosquitto, "thermostat")
    watcher = TestClient(mosquitto, *mosquitto.operator())
    try:
        watcher.subscribe(f"pb/{victim.id}/state")
        (state,) = [json.loads(p) for _, p, _ in quiet(watcher, 0.5)]
        assert state["state"] == "online"
        log_before = _mosquitto_log(mosquitto)
        # the attacker's credentials, the victim's client id, twice
        for _ in range(2):
            attacker = TestClient(mosquitto, creds.id, creds.password, client_id=victim.id)
            attacker.publish(f"pb/{creds.id}/state", json.dumps({"v": 1, "dev": creds.id, "state": "online"}))
            attacker.close()
        # no last will, no reconnect (which would say online again): nothing on its state
        assert quiet(watcher, 2.0) == []
        assert victim.running
        new_log = _mosquitto_log(mosquitto)[len(log_before) :]
        assert "already connected, closing old connection" not in new_log, new_log
    finally:
        watcher.close()


@pytest.mark.long
def test_client_id_takeover_of_the_gateway(
    mosquitto: Mosquitto, make_device: MakeDevice, gateway_process: GatewayProcess, keys: ota_keys.Keys
) -> None:
    gw_user = gateway_process.broker.username
    assert gw_user
    dev = ota_device(mosquitto, make_device, keys)
    wait_for(lambda: gateway_process.device(dev.id)["online"], 20, what="device online at the gateway")
    creds = make_device(mosquitto, "thermostat")
    log_before = _mosquitto_log(mosquitto)
    # a persistent session under the gateway's client id (and its user name, and the default id)
    stolen = []
    for cid in (gateway_process.client_id, gw_user, "pb-gateway"):
        attacker = TestClient(mosquitto, creds.id, creds.password, client_id=cid, clean_session=False)
        stolen += quiet(attacker, 1.0)
        attacker.close()
    # it got none of the gateway's subscriptions' messages, and the gateway kept its
    # connection: it still sees the device, and a command still goes through
    assert stolen == []
    new_log = _mosquitto_log(mosquitto)[len(log_before) :]
    assert "already connected, closing old connection" not in new_log, new_log
    assert gateway_process.device(dev.id)["online"]
    out = json.loads(gateway_process.cli("devices", "send", dev.id, "ping", "--json").stdout)
    assert out["ok"] is True, out


# ---- 6.4 filling flash on an unsigned manifest -------------------------------------------


def test_unsigned_manifest_with_big_blobs_is_refused_before_any_chunk(
    mosquitto: Mosquitto,
    device: DeviceProcess,
    release2: Release,
    keys: ota_keys.Keys,
    attacker: ota_keys.Keys,
) -> None:
    body = body_of(release2)
    blobs = blobs_of(release2)
    for i in range(4):  # 4 files of 1 MB each, that no trusted key signed
        raw = os.urandom(1 << 20)
        co = zlib.compressobj(9, zlib.DEFLATED, 10)
        z = co.compress(raw) + co.flush()
        blobs[sha256(z)] = z
        entry = {"size": len(raw), "sha256": sha256(raw), "zsize": len(z), "zsha256": sha256(z)}
        body["files"].append({"path": f"eco/tables/big{i}.bin", **entry})
    body["files"].sort(key=lambda f: f["path"])
    offer = signed_offer(body, blobs, keys, attacker.release_key())
    srv = serve(mosquitto, device, offer)
    try:
        st = srv.wait_for(("failed", "committed", "rolled_back"), 90)
        assert st["state"] == "failed" and st["reason"].startswith("unknown_key:"), st
        time.sleep(0.5)
        assert set(srv.served) == {"manifest"}, f"blob bytes were fetched: {srv.served}"
    finally:
        srv.close()
    assert_on_factory(device)


# ---- 6.5 a slow drip --------------------------------------------------------------------


@pytest.mark.long  # (make long: make test stays within 10 minutes)
def test_slow_drip_hits_the_overall_deadline(
    mosquitto: Mosquitto, make_device: MakeDevice, release2: Release, keys: ota_keys.Keys
) -> None:
    # every answer comes just before the device would ask again: no request ever
    # times out, and without an overall deadline the download would never end
    dev = ota_device(
        mosquitto, make_device, keys, ota_deadline_s=8, ota_chunk=512, ota_window=1, ota_timeout_ms=2000
    )

    def drip(obj: str, off: int, data: bytes) -> list[tuple[int, bytes]] | None:
        if obj != "manifest":
            time.sleep(0.4)
        return None

    srv = OtaServer(mosquitto, dev.id, offer_of(release2, keys), drip)
    srv.offer()
    try:
        t0 = time.monotonic()
        st = srv.wait_for(("failed", "committed", "staged"), 90)
        assert st["state"] == "failed" and st["reason"].startswith("deadline:"), (st, srv.seen)
        assert time.monotonic() - t0 < 30
        served: dict[str, Any] = {k: v for k, v in srv.served.items() if k != "manifest"}
        assert served, "the download never started"
        total = sum(f.zsize for f in release2.files if f.path.startswith("eco/"))
        assert sum(served.values()) < total
    finally:
        srv.close()
    time.sleep(0.5)
    assert_on_factory(dev)
