# A device's line to the gateway instead of the broker (docs/protocol.md
# 15-17): which one config.json's "link" names, made with the key the device
# proves itself with. Each link's code is loaded only when it is the one.


def for_device(config, hal, lean=True):
    """The link config.json's "link" names: {"serial": PORT, "baud": N} (pb/net/serial_link.py;
    PORT a path, "repl", or an ESP32's UART, "uart2" with "tx" and "rx" pins: hal.uart()),
    or {"ble": true}, the board's radio (hal.radio(), pb/net/ble_link.py); the
    device proves itself with the key its broker password gives (pb/net/proof.py).
    lean: update mode's (the room of the largest frame taken at the start);
    else the runtime's, whose update chunks come with RAM to spare."""
    from ..compat import forget
    from .proof import link_key

    dev, cfg = config["device"], config["link"]
    key = link_key(dev, config["broker"]["password"])
    q = config["broker"].get("queue", 32)
    if "serial" not in cfg:  # ({"ble": true})
        from .ble_link import for_device as ble

        link = ble(config, hal, key, queue_size=q, lean=lean)
    else:
        from .serial_link import SerialLink

        port = cfg["serial"]
        if port[:4] == "uart":  # (an ESP32's UART and its pins: pb/hal/esp32.py)
            port = hal.uart(cfg)
        link = SerialLink(dev, port, cfg.get("baud", 115200), q, key=key, lean=lean)
    forget(("pb.net.line",))  # (made once a boot: its RAM back to the heap)
    return link
