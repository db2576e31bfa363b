"""The gateway on PostgreSQL (`--db postgresql://...`), as a maker runs it:
the gateway and the CLI on a database in a throwaway cluster, a device on
the real MicroPython unix port updated to a committed release with the
CLI, the release's blobs in the gateway's files folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store import Store
from ota import keys as ota_keys
from ota.release import Release

from ..conftest import MakeDevice
from ..support.mosquitto import Mosquitto
from ..support.postgres import Postgres
from ..support.processes import GatewayProcess
from .conftest import ota_device, running_set

pytestmark = pytest.mark.slow


def test_a_gateway_on_postgresql_updates_a_device_to_committed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    postgres: Postgres,
    mosquitto: Mosquitto,
    make_device: MakeDevice,
    keys: ota_keys.Keys,
    gateway_keys: Path,
    release2: Release,
) -> None:
    monkeypatch.setenv("PERMABETA_HOME", str(tmp_path / "home"))  # (where its files go)
    url = postgres.database()
    gw = GatewayProcess(mosquitto.gateway_url, url, tmp_path / "gw.log", ["--keys", str(gateway_keys)])
    gw.start()
    try:
        assert "published" in gw.cli("ota", "publish", str(release2.path)).stdout
        dev = ota_device(mosquitto, make_device, keys)
        proc = gw.popen_cli("devices", "update", dev.id, "thermostat@2", "--timeout", "120")
        out, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, out + err
        assert "committed" in out
        assert running_set(dev)[0] == 2
        # what the gateway kept, in PostgreSQL; the blobs in its files folder
        with Store(url, readonly=True) as store:
            assert store.db.kind == "postgresql"
            (u,) = store.db.execute("SELECT * FROM updates WHERE device = ?", (dev.id,)).fetchall()
            assert u["state"] == "committed" and u["served"] > 64 * 1024
        assert any((tmp_path / "home" / "files").glob("*/blobs/*"))
        assert "postgresql://" in (tmp_path / "gw.log").read_text()
    finally:
        gw.stop()
