# The command repl.open (docs/protocol.md 4.13), loaded when it comes: its
# code takes no RAM of a running device until then.
from .compat import asyncio


def open_repl(dev):
    """The board's USB REPL opened until its next reset. On a device whose
    line is the REPL's own port, the file repl and a reset instead: that
    boot leaves the port to the REPL (loader.py boot), until the next one.
    Returns the command's result; None during an update's trial, which the
    REPL's boot would not count."""
    if dev.config.get("link", {}).get("serial") != "repl":
        dev.hal.set_repl(True)  # until the next reset: re-provisioning over USB is possible
        return {"repl": "open"}
    if dev.updates.boot.trial:
        return None
    from .store import write_atomic

    write_atomic(dev.base + "/" + "repl", b"")
    asyncio.create_task(dev.reboot_soon())
    return {"repl": "open", "rebooting": True}
