# Update mode: the device runs only its link and the download; the features
# are not loaded and the actuators stay in their safe state (relay off, vent
# closed). The runtime hands over to it when RAM is too short to download
# beside the features (a small heap, or a crash while downloading). When the
# download ends, staged or failed, the device resets back to normal: the boot
# guard installs what was staged.
import json

from .compat import asyncio, sleep_ms, ticks_diff, ticks_ms
from .mqtt_client import MQTTClient
from .ota import Agent, configure
from .otafs import held_files
from .store import read_bytes
from .updates import keep_status

OFFER = "ota/offer.json"

HELLO = "data/hello.json"  # the last hello the runtime sent


async def run(base, config, hal, counter, root):
    """Download the update in ota/job.json; returns the reset cause."""
    dev = config["device"]
    b = config["broker"]
    prefix = "pb/" + dev + "/"
    hal.safe_state()
    offline = json.dumps({"v": 1, "dev": dev, "state": "offline", "reason": "lost"})
    client = MQTTClient(
        dev,
        b["host"],
        b.get("port", 1883),
        b.get("user"),
        b.get("password"),
        keepalive=b.get("keepalive", 30),
        will=(prefix + "state", offline.encode(), 1, True),
        max_packet=4224,
    )

    def status(msg):
        msg["dev"] = dev
        msg["ts"] = hal.time()
        data = json.dumps(msg)
        keep_status(base, msg["state"], data)
        client.publish(prefix + "ota/status", data, 1, True)

    def request(uid, obj, off, length, seq):
        msg = {"v": 1, "dev": dev, "id": uid, "obj": obj, "off": off, "len": length, "seq": seq}
        client.publish(prefix + "ota/req", json.dumps(msg), 0, False)

    agent = Agent(
        base,
        config["model"],
        counter,
        lambda: held_files(root),
        request,
        status,
        hal.time,
        _up(client),
        hal.fault_point,
    )
    configure(agent, config, hal.caps)
    agent.tick = hal.feed_watchdog
    agent.once = True

    def on_message(topic, payload, retain):
        if topic == prefix + "ota/chunk":
            agent.on_chunk(payload)
        elif topic == prefix + "ota/offer" and not retain:
            agent.on_offer(payload)

    def birth():
        online = json.dumps({"v": 1, "dev": dev, "state": "online", "ts": hal.time()}).encode()
        out = [(prefix + "state", online, 1, True)]
        hello = read_bytes(base + "/" + HELLO)
        if hello:
            try:
                h = json.loads(hello)
                h["ota"]["state"] = "updating"
                h["ts"] = hal.time()
                out.insert(0, (prefix + "hello", json.dumps(h).encode(), 1, True))
            except (ValueError, KeyError, TypeError):
                pass
        return out

    client.on_message = on_message
    client.birth = birth
    offer = read_bytes(base + "/" + OFFER)
    if offer is not None:
        import os

        os.remove(base + "/" + OFFER)
        agent.on_offer(offer)
        if agent.job is not None:  # (refused, it is reported and the mode ends)
            agent.job["mode"] = "lean"  # resets come back here, not to the runtime
            agent.save_job()
    client.subscribe(prefix + "ota/offer", 1)
    client.subscribe(prefix + "ota/chunk", 0)
    print("pb[%s]: update mode: downloading without the features" % dev)
    link = asyncio.create_task(client.run())
    watchdog = asyncio.create_task(_feed(hal))
    try:
        await agent.run()  # returns once the update is staged or has failed
        if agent.restart == "ram":
            print("pb[%s]: update mode: out of RAM, going on after a reset" % dev)
        elif agent.restart == "check":
            print("pb[%s]: update mode: manifest fetched, its signatures are checked at boot" % dev)
        # what it reports goes before the reset (it is kept on flash too, and
        # the runtime says it again at its connect if this link never came up)
        t0 = ticks_ms()
        while (client.pending() or not client.up) and ticks_diff(ticks_ms(), t0) < 5000:
            await sleep_ms(20)
        await client.close()
    finally:
        client.drop()  # cancelled (the power went): no goodbye
        link.cancel()
        watchdog.cancel()
    return "update"


def _up(client):
    return lambda: client.up


async def _feed(hal):
    while True:
        hal.feed_watchdog()
        await sleep_ms(1000)
