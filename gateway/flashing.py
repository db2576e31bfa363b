"""Writing a MicroPython image to an ESP32-class board with esptool, used as
a library (esptool.cmds: detect_chip, run_stub, attach_flash, erase_flash,
write_flash, reset_chip; its own progress bar). Without an image given, the
official one for the chip found is taken from FIRMWARE_DIR, where the maker
put it (the message says which and from where)."""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .board import open_port
from .errors import BoardError, ConfigError

# the official MicroPython build for each chip and the address its image
# goes to (micropython.org/download/<build>/: "esptool write_flash <address> ...")
IMAGES = {
    "ESP32": ("ESP32_GENERIC", 0x1000),
    "ESP32-S2": ("ESP32_GENERIC_S2", 0x1000),
    "ESP32-S3": ("ESP32_GENERIC_S3", 0x0),
    "ESP32-C3": ("ESP32_GENERIC_C3", 0x0),
    "ESP32-C6": ("ESP32_GENERIC_C6", 0x0),
}
DOWNLOAD = "https://micropython.org/download/{build}/"
_ESP_IMAGE_MAGIC = 0xE9


def firmware_dir() -> Path:
    """Where `permabeta flash` looks for images: $XDG_CACHE_HOME/permabeta/firmware."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "permabeta" / "firmware"


def image_for(chip: str) -> Path:
    """The newest official image for chip in firmware_dir() (named as
    micropython.org names them: ESP32_GENERIC_C3-20250415-v1.25.0.bin).
    Raises ConfigError saying which to download, and where to put it."""
    build = IMAGES[chip][0]
    folder = firmware_dir()
    found = sorted(folder.glob(f"{build}-*.bin")) if folder.is_dir() else []
    if not found:
        raise ConfigError(
            f"no MicroPython image for the {chip}: download the latest release .bin of {build} from "
            f"{DOWNLOAD.format(build=build)} into {folder}/ (or give --firmware IMAGE.bin)"
        )
    return found[-1]


def _check_image(image: Path) -> bytes:
    try:
        data = image.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the image {image}: {exc.strerror}") from exc
    if not data or data[0] != _ESP_IMAGE_MAGIC:
        raise ConfigError(f"{image} is not an ESP32 firmware image (a MicroPython .bin starts with 0xE9)")
    return data


def detect(port: str, connect_s: float) -> Any:
    """The esptool loader of the chip on port, or BoardError: no chip in
    download mode answered within connect_s seconds, or not an ESP32."""
    from esptool.cmds import detect_chip
    from esptool.util import FatalError

    open_port(port, 115200).close()  # missing, busy, not allowed: said plainly
    deadline = time.monotonic() + connect_s
    last = "no answer"
    while True:
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                esp = detect_chip(port, 115200, connect_attempts=1)
            break
        except (FatalError, OSError) as exc:
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if time.monotonic() >= deadline:
            raise BoardError(
                f"no ESP32-class chip answered on {port} within {connect_s:g} s ({last}): is it the "
                "board's port? Hold BOOT, press and release RESET (EN), release BOOT: the chip then "
                "waits in its download mode; run the command again"
            )
    chip = str(esp.CHIP_NAME)
    if chip not in IMAGES:
        with esp:  # (closes its port)
            pass
        known = ", ".join(IMAGES)
        raise BoardError(f"the chip on {port} is an {chip}, not one permabeta runs on ({known})")
    return esp


def flash_image(
    port: str,
    image: Path | None = None,
    *,
    baud: int = 460800,
    erase: bool = False,
    connect_s: float = 10.0,
    find: Callable[[str], Path] = image_for,
) -> str:
    """Detect the chip on port and write image (else find(chip): the
    official one) to it; the chip's name. Raises BoardError, ConfigError."""
    with detect(port, connect_s) as esp:
        return _write(esp, port, find, image, baud, erase)


def _write(
    esp: Any, port: str, find: Callable[[str], Path], image: Path | None, baud: int, erase: bool
) -> str:
    """The writes of flash_image, on a chip detected."""
    from esptool.cmds import attach_flash, erase_flash, reset_chip, run_stub, write_flash
    from esptool.util import FatalError

    chip = str(esp.CHIP_NAME)
    try:
        build, address = IMAGES[chip]
        path = image or find(chip)
        data = _check_image(path)
        print(f"found an {chip} on {port}; writing {path.name} ({len(data) // 1024} KB) at {address:#x}")
        esp = run_stub(esp)
        if baud != 115200:
            esp.change_baud(baud)
        attach_flash(esp)
        if erase:
            print("erasing the whole flash (files included) ...")
            erase_flash(esp)
        write_flash(esp, [(address, data)])
        reset_chip(esp, "hard-reset")
    except FatalError as exc:
        text = str(exc)
        if "will not fit" in text or "too big" in text:
            raise BoardError(f"the image does not fit the flash of the {chip} on {port}: {text}") from exc
        raise BoardError(f"flashing the {chip} on {port} failed: {text}") from exc
    print(f"MicroPython ({build}) is on the board; next: permabeta provision --port {port} ...")
    return chip
