"""The unchanged firmware, gateway and simulator on a three-node NATS
cluster (gateway/nats_cluster.py, docs/makers.md "A NATS cluster"): devices
spread over the nodes are heard, answer commands and take an update to
commit; telemetry comes to the gateway through the cluster's work queue."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.service import Gateway

from ..support.nats import TestCluster
from ..support.wait import async_wait_for
from .conftest import Devices, StartGateway, Worker

pytestmark = pytest.mark.cluster


async def test_the_fleet_runs_unchanged_on_a_cluster_of_three(
    cluster: TestCluster, start_gateway: StartGateway, devices: Devices, eco_release: Path
) -> None:
    w = await start_gateway(node=0)
    gw = w.gw
    fleet = [await devices.start(node) for node in (0, 1, 2)]
    await async_wait_for(lambda: all(gw.is_online(d.id) for d in fleet), 20, what="all online")
    # telemetry from every node, through the work queue
    await async_wait_for(lambda: all(len(w.store.telemetry(d.id)) >= 2 for d in fleet), 20, what="telemetry")
    assert gw.cluster is not None and gw.cluster.taken >= 6
    # a command to a device on another node than the gateway's, and its reply
    reply = await gw.send_command(fleet[2].id, "ping")
    assert reply["ok"], reply
    # an update to commit
    stored, _ = gw.ota.releases.add(eco_release, time.time())
    u = await gw.ota.start(fleet[1].id, stored.id)
    await async_wait_for(lambda: gw.ota.get(u.id).ended, 60, what="the update ended")
    assert gw.ota.get(u.id).state == "committed", gw.ota.get(u.id)
    await async_wait_for(lambda: fleet[1].running() == ["eco", "thermostat"], 10, what="eco running")


async def test_what_devices_say_while_no_gateway_runs_waits_in_the_cluster(
    cluster: TestCluster, start_gateway: StartGateway, devices: Devices
) -> None:
    w = await start_gateway(node=1)
    dev = await devices.start(2)
    await async_wait_for(lambda: len(w.store.telemetry(dev.id)) >= 1, 20, what="telemetry")
    await w.stop()
    seq_before = max(r.seq for r in w.store.telemetry(dev.id) if r.seq is not None)
    await asyncio.sleep(3)  # (three telemetry messages, with no gateway)
    w2 = await start_gateway(node=2)
    await async_wait_for(
        lambda: {r.seq for r in w2.store.telemetry(dev.id)} >= set(range(seq_before, seq_before + 4)),
        20,
        what="what was said meanwhile, stored",
    )


def watch_states(gw: Gateway) -> list[str]:
    seen: list[str] = []
    gw.listeners.append(lambda kind, dev, msg: seen.append(msg["state"]) if kind == "ota/status" else None)
    return seen


@pytest.mark.parametrize("killed", ["another node", "the device's node"])
async def test_a_node_killed_mid_update_changes_no_outcome(
    cluster: TestCluster, start_gateway: StartGateway, devices: Devices, eco_release: Path, killed: str
) -> None:
    w = await start_gateway(node=0)
    dev = await devices.start(1)
    await async_wait_for(lambda: w.gw.is_online(dev.id), 20, what="online")
    states = watch_states(w.gw)
    stored, _ = w.gw.ota.releases.add(eco_release, time.time())
    u = await w.gw.ota.start(dev.id, stored.id)
    await async_wait_for(lambda: "downloading" in states, 20, what="downloading")
    node = cluster.node(2 if killed == "another node" else 1)
    node.kill()
    if killed == "the device's node":
        await asyncio.sleep(2)
        node.spawn()
    await async_wait_for(lambda: w.gw.ota.get(u.id).ended, 90, what="the update ended")
    assert w.gw.ota.get(u.id).state == "committed", w.gw.ota.get(u.id)
    await async_wait_for(lambda: dev.running() == ["eco", "thermostat"], 20, what="eco running")
    # and telemetry still reaches the gateway through the work queue
    n = len(w.store.telemetry(dev.id, limit=1000))
    await async_wait_for(lambda: len(w.store.telemetry(dev.id, limit=1000)) > n + 1, 20, what="telemetry")


async def two_workers(start_gateway: StartGateway) -> tuple[Worker, Worker, int]:
    """Workers gw-a (on node 0) and gw-b (node 1) of a pool: (the leader,
    the other, the leader's node)."""
    a = await start_gateway(node=0, worker="gw-a")
    b = await start_gateway(node=1, worker="gw-b")
    await async_wait_for(lambda: a.gw.leading != b.gw.leading, 15, what="one leader")
    return (a, b, 0) if a.gw.leading else (b, a, 1)


async def test_the_leading_worker_and_its_node_killed_mid_update_change_no_outcome(
    cluster: TestCluster, start_gateway: StartGateway, devices: Devices, eco_release: Path
) -> None:
    lead, other, lead_node = await two_workers(start_gateway)
    dev = await devices.start(2)
    await async_wait_for(lambda: lead.gw.is_online(dev.id) and other.gw.is_online(dev.id), 20, what="online")
    states = watch_states(other.gw)
    stored, _ = lead.gw.ota.releases.add(eco_release, time.time())
    u = await lead.gw.ota.start(dev.id, stored.id)
    await async_wait_for(lambda: "downloading" in states, 20, what="downloading")
    # no goodbye from the leader, and its node gone with it
    lead.gw.pool.release = lambda: None  # type: ignore[method-assign]
    await lead.stop()
    cluster.node(lead_node).kill()
    await async_wait_for(lambda: other.gw.leading, 20, what="the other worker leading")
    await async_wait_for(
        lambda: (x := other.gw.ota.table.get(u.id)) is not None and x.ended, 90, what="ended"
    )
    done = other.gw.ota.table.get(u.id)
    assert done is not None and done.state == "committed", done
    await async_wait_for(lambda: dev.running() == ["eco", "thermostat"], 20, what="eco running")


async def test_a_rollout_goes_on_unchanged_through_its_leading_worker_and_node_killed(
    cluster: TestCluster, start_gateway: StartGateway, devices: Devices, eco_release: Path
) -> None:
    lead, other, lead_node = await two_workers(start_gateway)
    fleet = [await devices.start(k % 3) for k in range(8)]  # spread over the three nodes
    for d in fleet:
        d.plant.temp = 24.0  # warm rooms: no heater at work (a busy thermostat defers its update)
    await async_wait_for(lambda: all(other.gw.is_online(d.id) for d in fleet), 30, what="online")
    lead.gw.ota.releases.add(eco_release, time.time())
    r = lead.gw.rollouts.create("thermostat@2", stages=(0.25, 1.0), soak_s=4, no_revert=True, seed=5)
    first = {m.device for m in lead.gw.rollouts.table.members(r.id) if m.stage == 0}
    assert len(first) == 2

    # mid-rollout: its first stage offered, not yet judged
    await async_wait_for(
        lambda: any(m.update_id for m in lead.gw.rollouts.table.members(r.id)), 30, what="offers"
    )
    assert lead.gw.rollouts.table.get(r.id).stage == 0  # type: ignore[union-attr]
    # no goodbye from the leader, and its node gone with it (its devices come back when it does)
    lead.gw.pool.release = lambda: None  # type: ignore[method-assign]
    await lead.stop()
    cluster.node(lead_node).kill()
    await async_wait_for(lambda: other.gw.leading, 20, what="the other worker leading")
    await asyncio.sleep(2)
    cluster.node(lead_node).spawn()
    await async_wait_for(
        lambda: (x := other.gw.rollouts.table.get(r.id)) is not None and x.state in ("completed", "halted"),
        150,
        what="the rollout ended",
    )
    done = other.gw.rollouts.table.get(r.id)
    decided = other.gw.rollouts.table.decisions(r.id, None)
    assert done is not None and done.state == "completed", (done, decided)

    def left() -> dict[str, str]:
        out = {}
        for m in other.gw.rollouts.table.members(r.id):
            u = other.gw.ota.get(m.update_id) if m.update_id else None
            if u is None or u.state != "committed":
                said = f"{u.state} {u.reason or ''}" if u is not None else "not offered"
                out[m.device] = f"{said}, online {other.gw.is_online(m.device)}"
        return out

    try:
        await async_wait_for(lambda: not left(), 90, what="every member committed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {left()}") from None
    # each step of the rollout decided once, whichever worker decided it
    steps = [(d["stage"], d["kind"]) for d in decided if d["kind"] != "look"]
    assert len(steps) == len(set(steps)), steps
    assert {"stage", "completed"} <= {k for _, k in steps}, steps
