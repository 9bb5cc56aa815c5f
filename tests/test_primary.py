"""Both pools on a multi-host URL (`app/primary.py`): the first writable host is found, a frozen
one costs one short attempt, a move to another host closes what led to the old one, a write
refused as read-only is a 503 that empties the pool, and a COMMIT that stopped waiting for its
synchronous standby is a failure, never a success."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from app.config import Settings
from app.db import create_engine, create_session_maker, is_database_outage, session_scope
from app.errors import ServiceUnavailable
from app.metrics import DATABASE_UNREPLICATED_COMMITS
from app.primary import Primary, UnreplicatedCommit, endpoints, finish
from app.usage.repository import UsageStore
from app.usage.store import UsageDebit
from dev.postgres import EmbeddedPostgres

pytestmark = pytest.mark.database

REFUSED = "127.0.0.1:9"  # nothing listens on loopback's discard port: refused at once


def _host_of(url: str) -> str:
    """The URL's one host as a `host=` entry."""
    return endpoints(url)[0][0].name


def _with_hosts(url: str, *hosts: str) -> str:
    """`url` (one host) as a multi-host URL naming `hosts` in this order."""
    base = url.split("?")[0].split("@")
    user, database = base[0], base[1].partition("/")[2]
    query = "&".join(f"host={h}" for h in hosts)
    return f"{user}@/{database}?{query}&target_session_attrs=read-write"


class FreezableProxy:
    """A TCP proxy on loopback to a PostgreSQL server that can be frozen: it then keeps every
    connection open and passes nothing on, as a SIGSTOPped primary does."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.frozen = asyncio.Event()
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> FreezableProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, _, port = self.upstream.rpartition(":")
        if host.startswith("/"):  # a socket folder (the embedded server), as `/folder:port`
            return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        return await asyncio.open_connection(host, int(port))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.frozen.is_set():
            await asyncio.sleep(3600)  # accepted, never answered
        up_reader, up_writer = await self._open_upstream()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if self.frozen.is_set():
                        await asyncio.sleep(3600)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def test_both_pools_reach_the_first_writable_host_of_a_multi_host_url(app: Any) -> None:
    url = app.state.settings.database_url.get_secret_value()
    multi = _with_hosts(url, REFUSED, _host_of(url))
    settings = Settings(environment="test", database_url=multi)
    primary = Primary(multi, attempt_timeout=1.0)
    engine = create_engine(settings, primary=primary)
    store = await UsageStore.open(multi, max_size=1, primary=primary)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        assert await store.wallet("nobody") is None
    finally:
        await store.close()
        await engine.dispose()
    assert primary.current == _host_of(url)


async def test_a_frozen_first_host_costs_one_short_attempt(app: Any) -> None:
    url = app.state.settings.database_url.get_secret_value()
    async with FreezableProxy(_host_of(url)) as frozen:
        frozen.frozen.set()
        primary = Primary(_with_hosts(url, frozen.address, _host_of(url)), attempt_timeout=0.5)
        started = time.monotonic()
        connection = await primary.connect()
        elapsed = time.monotonic() - started
        await connection.close()
    assert connection.endpoint == _host_of(url)
    assert elapsed < 2.0  # one 0.5 s attempt at the frozen host, then the live one


async def test_a_new_primary_closes_the_connections_stuck_on_the_frozen_one(app: Any) -> None:
    url = app.state.settings.database_url.get_secret_value()
    async with FreezableProxy(_host_of(url)) as proxy:
        primary = Primary(_with_hosts(url, proxy.address, _host_of(url)), attempt_timeout=0.5)
        stuck = await primary.connect()
        assert stuck.endpoint == proxy.address
        proxy.frozen.set()
        query = asyncio.create_task(stuck.fetchval("SELECT 1"))
        await asyncio.sleep(0.2)
        assert not query.done()  # a frozen primary: the statement waits for ever
        await primary.probe()  # what the service's watch does every second
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await asyncio.wait_for(query, 2.0)
    assert primary.current == _host_of(url)


async def test_a_write_refused_as_read_only_is_a_503_and_the_gateway_pool_starts_afresh(
    app: Any,
) -> None:
    url = app.state.settings.database_url.get_secret_value()
    store = await UsageStore.open(url, max_size=1)
    try:
        async with store.pool.acquire() as conn:
            # As a primary demoted under its open connections answers writes.
            await conn.execute("SET default_transaction_read_only = on")
            demoted = conn.get_server_pid()
        with pytest.raises(ServiceUnavailable) as refused:
            await store.debit(UsageDebit("user-ro", "req-ro", 1, "h", None))
        assert refused.value.headers == {"Retry-After": "1"}
        async with store.pool.acquire() as conn:
            assert conn.get_server_pid() != demoted
            assert await conn.fetchval("SHOW default_transaction_read_only") == "off"
    finally:
        await store.close()


async def test_a_write_refused_as_read_only_empties_the_orm_pool(app: Any) -> None:
    settings = app.state.settings
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SET default_transaction_read_only = on"))
            await conn.commit()
        with pytest.raises(sa_exc.DBAPIError) as refused:
            async with session_scope(create_session_maker(engine)) as session:
                await session.execute(text("CREATE TEMP TABLE t (x int)"))
        assert refused.value.connection_invalidated
        assert is_database_outage(refused.value)
        async with engine.connect() as conn:
            assert (
                await conn.execute(text("SHOW default_transaction_read_only"))
            ).scalar() == "off"
    finally:
        await engine.dispose()


# A primary whose synchronous standby never answers: every COMMIT of a write waits for it.


@pytest.fixture(scope="module")
async def waiting_primary() -> AsyncIterator[str]:
    """A throwaway server (the embedded one, in a folder of its own) whose
    `synchronous_standby_names` names a standby that never connects."""
    # Not under pytest's tmp_path: its 0700 parents keep out the server's own user.
    folder = Path(tempfile.mkdtemp(prefix="billing-syncrep-"))
    server = EmbeddedPostgres(folder / "pg")
    url = server.start()
    dsn = endpoints(url)[0][0].dsn
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS t (x int)")  # before COMMITs wait
        await conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()
    try:
        yield url
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def _cancel_when_waiting(dsn: str) -> int:
    """Cancel (as a statement timeout or `pg_cancel_backend` does) the backend waiting for the
    synchronous standby, once there is one; its pid."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(100):
            pid = await conn.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' LIMIT 1"
            )
            if pid is not None:
                await conn.fetchval("SELECT pg_cancel_backend($1)", pid)
                return int(pid)
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError("no COMMIT ever waited for the synchronous standby")


async def test_a_gateway_commit_cancelled_while_waiting_for_the_standby_is_a_failure(
    waiting_primary: str,
) -> None:
    store = await UsageStore.open(waiting_primary, max_size=1)
    before = DATABASE_UNREPLICATED_COMMITS._value.get()
    try:
        write = asyncio.create_task(store._write("INSERT INTO t VALUES (1) RETURNING x"))
        await _cancel_when_waiting(endpoints(waiting_primary)[0][0].dsn)
        with pytest.raises(UnreplicatedCommit):
            await write
    finally:
        await store.close()
    assert DATABASE_UNREPLICATED_COMMITS._value.get() == before + 1


async def test_an_orm_commit_cancelled_while_waiting_for_the_standby_is_a_failure(
    waiting_primary: str,
) -> None:
    engine = create_engine(Settings(environment="test", database_url=waiting_primary))
    maker = create_session_maker(engine)

    async def write() -> None:
        async with session_scope(maker) as session:
            await session.execute(text("INSERT INTO t VALUES (2)"))

    try:
        task = asyncio.create_task(write())
        await _cancel_when_waiting(endpoints(waiting_primary)[0][0].dsn)
        with pytest.raises(UnreplicatedCommit) as failed:
            await task
        assert is_database_outage(failed.value)  # answered 503 `service_unavailable`
    finally:
        await engine.dispose()


async def test_a_cancelled_request_never_cancels_the_commit_it_is_waiting_for(
    waiting_primary: str,
) -> None:
    dsn = endpoints(waiting_primary)[0][0].dsn
    store = await UsageStore.open(waiting_primary, max_size=1)
    admin = await asyncpg.connect(dsn)
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
    try:
        write = asyncio.create_task(finish(store._write("INSERT INTO t VALUES (3) RETURNING x")))
        while not await admin.fetchval(waiting):
            await asyncio.sleep(0.05)
        write.cancel()  # the client went away
        await asyncio.sleep(0.5)
        assert not write.done()
        assert await admin.fetchval(waiting) == 1  # still waiting for the standby
        await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await admin.execute("SELECT pg_reload_conf()")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(write, 5.0)
    finally:
        await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()
        await store.close()


async def test_a_portal_request_that_finds_no_primary_is_a_503(
    app: Any, client: Any, make_token: Any
) -> None:
    url = app.state.settings.database_url.get_secret_value()
    nowhere = _with_hosts(url, REFUSED, "127.0.0.1:7")  # no host takes a connection
    engine = create_engine(Settings(environment="test", database_url=nowhere))
    real = app.state.session_maker
    app.state.session_maker = create_session_maker(engine)
    try:
        response = await client.get(
            "/v1/orders", headers={"Authorization": f"Bearer {make_token('user-np')}"}
        )
    finally:
        app.state.session_maker = real
        await engine.dispose()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["code"] == "service_unavailable"
