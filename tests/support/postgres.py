"""A throwaway PostgreSQL cluster for the tests: Debian's PostgreSQL 15
(initdb, pg_ctl), in a folder of its own, on a free loopback port, trusting
local connections, with nothing synced to disk (a crash loses the cluster,
which the tests throw away anyway). PostgreSQL refuses to run as root: as
root the cluster is the postgres user's (Debian's package makes it)."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gateway.broker import free_port

USER = "pb"  # the cluster's superuser, the tests' role


def bin_dir() -> Path | None:
    """The folder of Debian's newest PostgreSQL programs, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class Postgres:
    """One cluster: start() it, database() a fresh database in it, stop()."""

    def __init__(self) -> None:
        found = bin_dir()
        if found is None:
            raise RuntimeError("no PostgreSQL here: apt-get install postgresql")
        self.bin = found
        self.port = free_port()
        # its own folder under /tmp (a pytest folder is root's alone, where the postgres user
        # could not reach its data); removed by stop()
        self.dir = Path(tempfile.mkdtemp(prefix="pb-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._owner: pwd.struct_passwd | None = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self._owner is not None:
            os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)
        self._made = 0

    def _run(self, args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self._owner is not None:
            cmd = [
                "setpriv",
                f"--reuid={self._owner.pw_uid}",
                f"--regid={self._owner.pw_gid}",
                "--init-groups",
                *cmd,
            ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{cmd[-1] if cmd else ''}: {args[0]} failed: {done.stderr.strip()}\n{log}")
        return done

    def start(self) -> Postgres:
        self._run(
            [self.bin / "initdb", "-D", self.data, "-U", USER, "-A", "trust", "--no-sync", "-E", "UTF8"]
        )
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run([self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start"])
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """The URL of a new, empty database of its own."""
        import psycopg

        self._made += 1
        name = f"t{self._made}_{secrets.token_hex(3)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if self.data.exists():
                self._run([self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"], timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
