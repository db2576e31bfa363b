"""What the command line prints names a PostgreSQL database without its
password (docs/makers.md, "The gateway's database: SQLite or PostgreSQL"):
in what it says it did and in the commands it prints for the maker to run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.broker import free_port
from gateway.cli import main
from gateway.cli_registry import password_hash
from gateway.registry import Registry
from gateway.store import Store

from ..support.postgres import Postgres

SECRET = "s3cret-pw"


def test_what_the_commands_print_names_the_database_without_its_password(
    postgres: Postgres, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres.database().replace("@", f":{SECRET}@", 1)  # (its server trusts loopback: any password)
    with Store(url) as store:
        Registry(store).register(
            "th-1", "thermostat", "thermostat-v1", password_hash("th-1", "pw"), time.time()
        )
    listen = f"127.0.0.1:{free_port()}"
    assert main(["broker", "config", "--out", str(tmp_path / "b"), "--db", url, "--listen", listen]) == 0
    assert main(["broker", "config", "--out", str(tmp_path / "w"), "--db", url, "--worker", "gw-1"]) == 0
    assert main(["broker", "cluster", "--out", str(tmp_path / "c"), "--db", url, "--worker", "gw-1"]) == 0
    assert main(["devices", "revoke", "th-1", "--db", url]) == 0
    assert main(["devices", "restore", "th-1", "--db", url]) == 0
    assert main(["devices", "send", "th-1", "ping", "--db", url]) == 1  # (no gateway runs on it)
    assert main(["devices", "show", "th-9", "--db", url]) == 1  # (no such device)
    said = capsys.readouterr()
    assert SECRET not in said.out + said.err
    shown = url.replace(SECRET, "***")
    assert f"permabeta gateway run --db '{shown}'" in said.out
    assert "put it back, or keep it in PGPASSWORD or ~/.pgpass" in said.out
    assert f"(at {shown} (no gateway runs on it" in said.out
    assert f"no gateway is running on {shown}" in said.err
    assert f"no device 'th-9' in {shown}" in said.err
    # a cluster's worker is told the command that runs it as that worker
    assert f"its worker gw-1: permabeta gateway run --db '{shown}' --worker gw-1 --api HOST:PORT" in said.out
