"""Which MicroPython image `permabeta flash` writes, and what it says when
it has none: no board needed up to the chip."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.flashing import IMAGES, _check_image, firmware_dir, image_for


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "permabeta" / "firmware"


def test_without_an_image_the_message_says_which_and_where(cache: Path) -> None:
    assert firmware_dir() == cache
    with pytest.raises(ConfigError) as exc:
        image_for("ESP32-C3")
    msg = str(exc.value)
    assert "no MicroPython image for the ESP32-C3" in msg
    assert "https://micropython.org/download/ESP32_GENERIC_C3/" in msg
    assert f"into {cache}/ (or give --firmware IMAGE.bin)" in msg


def test_the_newest_image_of_the_chip_is_taken(cache: Path) -> None:
    cache.mkdir(parents=True)
    older, newer = "ESP32_GENERIC-20240602-v1.23.0.bin", "ESP32_GENERIC-20250415-v1.25.0.bin"
    for name in (older, newer, "ESP32_GENERIC_S3-20250415-v1.25.0.bin"):
        (cache / name).write_bytes(b"\xe9")
    assert image_for("ESP32").name == "ESP32_GENERIC-20250415-v1.25.0.bin"
    assert image_for("ESP32-S3").name == "ESP32_GENERIC_S3-20250415-v1.25.0.bin"


def test_a_file_that_is_no_esp_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"MicroPython .mpy is not an image")
    with pytest.raises(ConfigError, match="is not an ESP32 firmware image"):
        _check_image(tmp_path / "x.bin")
    with pytest.raises(ConfigError, match="cannot read the image"):
        _check_image(tmp_path / "missing.bin")


def test_every_esp32_class_chip_has_an_official_build_and_address() -> None:
    assert IMAGES["ESP32"] == ("ESP32_GENERIC", 0x1000)
    assert all(build.startswith("ESP32_GENERIC") for build, _ in IMAGES.values())
