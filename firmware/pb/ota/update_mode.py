# Update mode: the device runs only its link and the download; the features
# are not loaded and the actuators stay in their safe state (relay off, vent
# closed). The runtime hands over to it when RAM is too short to download
# beside the features (a small heap, or a crash while downloading). When the
# download ends, staged or failed, the device resets back to normal: the boot
# installs what was staged. Its messages are the runtime's, from the
# same builders and senders (pb/net/wire.py, pb/ota/transfer.py, report.py).

from ..compat import asyncio, mem_free, sleep_ms, ticks_diff, ticks_ms
from ..errors import HalError, ProtocolError
from ..net import wire
from ..store import read_bytes
from . import flash
from .download import Agent, configure
from .flash import read_json, remove
from .report import send_status
from .transfer import send_request


async def run(base, config, hal, counter, client=None):
    """Download the update in ota/job.json; returns the reset cause.
    client: what makes its MQTT client (pb/net/tls.py's over TLS), else the plain one."""
    dev = config["device"]
    b = config["broker"]
    hal.safe_state()
    if "link" in config:  # a line: serial or Bluetooth LE (docs/protocol.md 15-17)
        from ..net.line import for_device

        client = for_device(config, hal)
    else:
        if client is None:
            from ..net.mqtt_client import MQTTClient as client
        will = wire.dumps("state", wire.state(dev, "offline", reason="lost"))
        client = client(
            dev,
            b["host"],
            b.get("port", 1883),
            b.get("user"),
            b.get("password"),
            keepalive=b.get("keepalive", 30),
            will=(wire.topic(dev, "state"), will, 1, True),
            max_packet=wire.MAX_PACKET,
        )

    said = [False]
    keep_to = base + "/" + flash.LAST_STATUS

    def status(msg):
        if msg["state"] == "downloading" and not said[0]:
            said[0] = True  # the heap the download runs in, once
            print("pb[%s]: update mode: downloading, heap free %d" % (dev, mem_free()))
        msg["ts"] = hal.time()
        send_status(client, dev, msg, msg["ts"], keep_to)

    agent = Agent(
        base,
        config["model"],
        counter,
        lambda msg: send_request(client, dev, msg),
        status,
        hal.time,
        lambda: client.up,
        hal.fault_point,
    )
    configure(agent, config, hal)
    agent.tick = hal.feed_watchdog
    agent.once = True

    def on_message(topic, payload, retain):
        if topic == wire.topic(dev, "ota/chunk"):
            agent.on_chunk(payload)
        elif topic == wire.topic(dev, "ota/offer") and not retain:
            agent.on_offer(payload)

    def birth():
        now = hal.time()
        out = [(wire.topic(dev, "state"), wire.dumps("state", wire.state(dev, "online", now)), 1, True)]
        hello = read_json(base + "/" + flash.HELLO)  # the runtime's last, as it sent it
        if hello:
            try:
                hello["ota"]["state"] = "updating"
                if agent.job is not None:  # (the offer it took: the gateway sends it no repeat)
                    hello["ota"]["update"] = agent.job["id"]
                hello["ts"] = now
                out.insert(0, (wire.topic(dev, "hello"), wire.dumps("hello", hello), 1, True))
            except (KeyError, TypeError, ProtocolError):  # (not the hello it should be)
                pass
        return out

    client.on_message = on_message
    client.birth = birth
    offer = read_bytes(base + "/" + flash.OFFER)
    if offer is not None:
        remove(base + "/" + flash.OFFER)
        agent.on_offer(offer)
        if agent.job is not None:  # (refused, it is reported and the mode ends)
            agent.job["mode"] = "lean"  # resets come back here, not to the runtime
            agent.save_job()
    client.subscribe(wire.topic(dev, "ota/offer"), 1)
    client.subscribe(wire.topic(dev, "ota/chunk"), 0)
    print("pb[%s]: update mode: downloading without the features" % dev)
    link = asyncio.create_task(_link(hal, config, client))
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
            await sleep_ms(5)
        await client.close()
    finally:
        client.drop()  # cancelled (the power went): no goodbye
        link.cancel()
        watchdog.cancel()
    return "update"


async def _link(hal, config, client):
    """The network first (a board's reset took its Wi-Fi down), then the
    broker, as the runtime does (pb/runtime.py _link)."""
    delay = 1000
    while True:
        try:
            await hal.network_up(config)
            break
        except HalError as exc:
            print("pb: update mode: network: %s" % exc)
            await sleep_ms(delay)
            delay = min(delay * 2, 60000)
    await client.run()


async def _feed(hal):
    while True:
        hal.feed_watchdog()
        await sleep_ms(1000)
