"""Keys, feature folders copied out of firmware/features, and a release
built from them, each in the test's own tmp_path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.paths import firmware_dir
from ota.keys import Keys, keygen
from ota.release import Release, build

from .helpers import write_feature


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return keygen(tmp_path / "keys")


@pytest.fixture
def features_dir(tmp_path: Path) -> Path:
    """A copy of the shipped features, free to modify."""
    dest = tmp_path / "features"
    shutil.copytree(firmware_dir() / "features", dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture
def eco(tmp_path: Path) -> Path:
    """A small extra thermostat feature: reads temperature, publishes boost."""
    return write_feature(
        tmp_path / "extra" / "eco",
        {
            "name": "eco",
            "version": "1.0.0",
            "api": 1,
            "requires": ["temperature"],
            "permissions": {"reads": ["temperature"], "publishes": ["boost"]},
        },
    )


@pytest.fixture
def release(tmp_path: Path, keys: Keys, features_dir: Path) -> Release:
    """The real thermostat feature, built and signed, counter 2."""
    return build(
        "thermostat",
        [features_dir / "thermostat"],
        "2026.11.1",
        tmp_path / "r1",
        counter=2,
        keys=keys,
        forms=("py",),
    )
