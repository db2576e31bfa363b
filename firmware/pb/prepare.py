# Everything the boot does once before the runtime runs: read the config and
# the board file, pick the HAL backend, install a staged update; the set
# (runtime and features) is the boot loader's choice (firmware/loader.py).
# pb/start.py lets this module go afterwards.
import json

from . import API, VERSION
from .compat import collect, const, forget
from .errors import ConfigError, StoreError
from .ota import flash
from .store import exists, makedirs, read_bytes, write_atomic

# A block kept whole from the start of the boot for an install's signature
# check (pb/ota/install.py): the code and copies it loads need blocks of a
# few KB, which a heap cut up by the boot's small blocks lacks
_ROOM = const(12288)

# What only the boot needs, let go before the runtime loads (the install's
# code and the boot loader's). tests/firmware/test_module_lists.py checks these.
BOOT_ONLY_MODULES = (
    "loader",
    "pb.ota.roots",
    "pb.ota.install",
    "pb.ota.needs",
    "pb.ota.trust",
    "pb.ota.ed25519",
    "pb.ota.sha512",
    "pb.ota.files",
    "pb.ota.forms",
    "pb.ota.flash",
    "pb.ota.report",
    "pb.ota.clock",
    "pb.manifest",
)


# What verifying a time statement loads, let go before the install
CLOCK_MODULES = ("pb.ota.clock", "pb.ota.roots", "pb.ota.trust", "pb.ota.ed25519", "pb.ota.sha512")


def load_json(path, what):
    data = read_bytes(path)
    if data is None:
        raise ConfigError("%s missing: %s" % (what, path))
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ConfigError("%s is not JSON (%s): %s" % (what, path, exc)) from None
    if not isinstance(value, dict):
        raise ConfigError("%s is not a JSON object: %s" % (what, path))
    return value


def load_config(root="."):
    """The device's config.json, checked against its schema (pb/config.py).
    Raises ConfigError naming the key. The check's code is loaded only when
    the file differs from the one that last passed (flash.CONFIG_CHECKED
    keeps its digest, with the runtime's version): a board's boots after an
    update, in update mode or on trial, keep the RAM it would take."""
    import hashlib

    path = root + "/" + flash.CONFIG
    data = read_bytes(path)
    c = load_json(path, "device config")  # (its errors first)
    mark = hashlib.sha256(VERSION.encode() + b"\n" + data).digest()
    data = None
    checked = root + "/" + flash.CONFIG_CHECKED
    if read_bytes(checked) != mark:
        from .config import check

        try:
            check(c)
        finally:
            forget(("pb.config",))
        try:
            makedirs(root + "/" + flash.DATA)
            write_atomic(checked, mark)
        except StoreError:
            pass  # (checked again at the next boot)
    return c


def board_file(root, config, chosen=None):
    """The board file: the one the chosen set's runtime carries (a slot's
    pb/boards/<board>.json, from a release that carries the runtime), else
    the one provisioned (docs/ota.md 2.1)."""
    name = "/" + config["board"] + ".json"
    p = chosen[1] if chosen else None
    if p and p.get("set") != flash.FACTORY:
        path = root + "/" + p["set"] + "/" + flash.RUNTIME_BOARDS + name
        if exists(path):
            return path
    return root + "/" + flash.BOARDS + name


def make_hal(config, root=".", chosen=None):
    path = board_file(root, config, chosen)
    board = load_json(path, "board file")
    kind = config.get("hal", "host")
    if kind == "host":
        from .hal.host import HostHal

        return HostHal(board, root, path)
    if kind == "esp32":
        from .hal.esp32 import Esp32Hal

        return Esp32Hal(board, root, path)
    raise ConfigError("config: unknown hal %r (host, esp32)" % kind)


def lean_job(root):
    """True if a download waits to run in update mode (pb/ota/update_mode.py)."""
    return flash.lean_job(root)


def choose(root, config, hal, room=None, chosen=None):
    """The boot loader's choice (firmware/loader.py decide: the one main.py
    made before this runtime was loaded, or, None, made here) and the
    version of the root the device trusts. room(): frees the block
    prepare() kept whole for an install's signature check."""
    # a root provisioned or sent is taken first, so that an install checks
    # with it; a staged update is installed now, while little else is in
    # RAM, and the device resets after it; a manifest update mode fetched
    # has its signatures checked (the install's code is loaded only for these)
    from .ota.roots import root_versions, root_waits

    if root_waits(root):
        from .ota.roots import settle as take_roots

        try:
            trusted = take_roots(root, hal.time(), hal.fault_point)
        except MemoryError:
            # no block for the check beside the room kept for an install's:
            # again with that room (a crash here would come back at every boot)
            if room is not None:
                room()
            collect()
            trusted = take_roots(root, hal.time(), hal.fault_point)
        forget(("pb.ota.trust", "pb.ota.ed25519", "pb.ota.sha512", "pb.ota.report"))
    else:
        versions = root_versions(root)
        trusted = versions[0] if versions else 0
    forget(("pb.ota.roots",))
    # the gateway's signed time kept by the last run, verified while the
    # heap is empty; a clock behind the floor is set to it (docs/ota.md 2.3).
    # Not before update mode: the check's names would stay in its RAM (the
    # install's check takes the statement, and the runtime's next boot)
    if read_bytes(root + "/" + flash.TIME) is not None and not flash.lean_job(root):
        from .ota.clock import settle as set_clock

        try:
            set_clock(root, config["device"], hal)
        except MemoryError:
            pass  # (kept on flash: verified at the next check)
    else:
        floor = flash.floor_ms(root)
        if hal.time() < floor / 1000:
            hal.set_time(floor / 1000)
    forget(CLOCK_MODULES)  # (and a collection: the install's heap, as it was)
    # (the install's code only where it runs: every name it holds stays in
    # RAM for the boot, update mode's too)
    job = flash.read_job(root)
    if job is not None and (job.get("phase") == "staged" or flash.to_check(job)):
        from .ota.install import check_fetched, install_staged

        device = (config["device"], config["model"], hal.caps, API)
        # (hal.partition: asked only for an update with an image)
        if install_staged(root, device, hal.time(), hal.fault_point, room, hal.partition):
            hal.reset("update")
        if check_fetched(root, device, hal.time(), room, hal.partition):  # a manifest update mode fetched
            hal.reset("update")
    if chosen is None:
        # (the simulator's HAL says which image its bootloader chose; main.py
        # asks the boot loader itself, which asks the board)
        image = getattr(hal, "image", None)
        chosen = flash.boot_loader().decide(root, image, lambda: hal.reset("rollback"))
    if chosen[2]:
        hal.fault_point("trial-boot")  # (the loader counted it on flash)
    return tuple(chosen) + (trusted,)


def prepare(root, chosen=None):
    """(config, hal, the boot loader's choice, whether to run in update
    mode, the folder of the runtime's records)."""
    hold = [bytearray(_ROOM)]  # before the boot's own blocks cut up the heap
    config = load_config(root)
    hal = make_hal(config, root, chosen)
    if config.get("repl") == "closed":
        hal.set_repl(False)  # a shipped board's: as early as the config is known
    data = read_bytes(root + "/hal/clock")  # a host's clock as it was set (pb/hal/host.py CLOCK_FILE)
    if data:
        try:
            hal.offset = int(data)
        except ValueError:
            pass
    chosen = choose(root, config, hal, hold.clear, chosen)
    hold = None
    lean = lean_job(root)
    forget(BOOT_ONLY_MODULES)  # the runtime gets their RAM
    return config, hal, chosen, lean, root + "/" + flash.DATA
