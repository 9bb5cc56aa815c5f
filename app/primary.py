"""The writable PostgreSQL among several hosts: how both pools connect to it, notice a commit that
may not have reached the synchronous standby, and let go of a primary that is gone.

`BILLING_DATABASE_URL` may name the nodes of a pg_auto_failover formation, each with its port:

    postgresql+asyncpg://app@/billing?host=db1:5432&host=db2:5432&host=db3:5432&target_session_attrs=read-write

`Primary` turns that URL into one asyncpg DSN per host and connects through them itself, because
asyncpg alone gets two things wrong for a failover: its DSN parser keeps only the last `host=`,
and its connect `timeout` covers the whole host list, so a frozen first host (TCP accepted, no
answer) uses it all up before the live second host is tried. Here each host gets
`database_connect_timeout_seconds` of its own, the host that answered last is tried first, and a
host that is up but read-only (a standby) is skipped (`target_session_attrs=read-write`, the
default when the URL names several hosts).

Both pools (the ORM's and the gateway's asyncpg pool) connect through the same `Primary`, so
both follow the primary together. When a connection lands on another host than the one before,
the old primary is finished as far as this process is concerned: every connection still open to
it is terminated (closed on our side, never cancelled: a cancel would let a COMMIT waiting for
the synchronous standby return success), so requests stuck on a frozen primary fail at once as
503 and their retries reach the new one. `watch()` probes the primary every
`database_probe_interval_seconds` so that this happens even while no request connects.

A COMMIT whose wait for the synchronous standby is cancelled (a statement timeout, an operator's
`pg_cancel_backend`, a server shutting down) returns success with a WARNING that the transaction
"might not have been replicated". `BillingConnection` listens for it; `raise_if_unreplicated()`
turns it into `UnreplicatedCommit` (503, retry with the same id), a metric and an error log
line. Both pools check after every write they acknowledge.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import structlog
from sqlalchemy.engine import make_url

from app.metrics import DATABASE_PRIMARY_CHANGES, DATABASE_UNREPLICATED_COMMITS

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

UNREPLICATED_DETAIL = "might not have been replicated"
"""PostgreSQL's words (src/backend/replication/syncrep.c) when a COMMIT stops waiting for the
synchronous standby: "The transaction has already committed locally, but might not have been
replicated to the standby." """


class UnreplicatedCommit(ConnectionError):
    """A COMMIT returned, but PostgreSQL said it might not have reached the synchronous standby:
    the write may vanish at a failover, so it is not acknowledged (503; the client retries the
    same id, which finds it, or writes it again, on the primary that survives)."""


class NoPrimary(ConnectionError):
    """No host of the URL took a connection as the primary (each refused, timed out or was a
    standby): a database outage, answered 503."""


class BillingConnection(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection that remembers the host it reached and, while it listens
    (`watch_commits()`), whether PostgreSQL warned that a COMMIT might not have been
    replicated."""

    __slots__ = ("_listening", "_unreplicated", "endpoint")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.endpoint = ""
        self._unreplicated = False
        self._listening = False

    def watch_commits(self) -> bool:
        """Listen for the warning (the ORM's connections for their whole life; a pooled asyncpg
        connection only while acquired: its pool refuses listeners left on at release). False
        when it already listens."""
        if self._listening:
            return False
        self.add_log_listener(self._on_message)
        self._listening = True
        return True

    def unwatch_commits(self) -> None:
        self.remove_log_listener(self._on_message)
        self._listening = False

    def _on_message(self, connection: Any, message: Any) -> None:
        # Called from the protocol (loop.call_soon) as the notice arrives, before the awaited
        # statement's result is handed back: `raise_if_unreplicated()` right after sees it.
        if UNREPLICATED_DETAIL in (getattr(message, "detail", None) or ""):
            self._unreplicated = True
            DATABASE_UNREPLICATED_COMMITS.inc()
            log.error(
                "database_commit_not_replicated",
                host=self.endpoint,
                sqlstate=getattr(message, "sqlstate", None),
                message=getattr(message, "message", None),
            )

    def raise_if_unreplicated(self) -> None:
        """Raise `UnreplicatedCommit` if a COMMIT since the last call was not confirmed by the
        synchronous standby."""
        if self._unreplicated:
            self._unreplicated = False
            raise UnreplicatedCommit(
                "The commit might not have been replicated to the synchronous standby."
            )


def raise_if_unreplicated(connection: Any) -> None:
    """`BillingConnection.raise_if_unreplicated` of a connection (a pool's proxy included); other
    connections are never checked."""
    check = getattr(connection, "raise_if_unreplicated", None)
    if check is not None:
        check()


@contextlib.contextmanager
def commits_watched(connection: Any) -> Iterator[None]:
    """Listen on `connection` (a pooled one) for the block, then raise `UnreplicatedCommit` if a
    COMMIT in it might not have been replicated."""
    watch = getattr(connection, "watch_commits", None)
    if watch is None:
        yield
        return
    # Bound to the connection itself, not the pool's proxy: a connection closed under the block
    # (a failover) detaches the proxy before the block ends.
    unwatch, check = connection.unwatch_commits, connection.raise_if_unreplicated
    started = watch()
    try:
        yield
    finally:
        if started:
            unwatch()
    check()


@dataclass(frozen=True)
class Endpoint:
    """One host of the URL and the asyncpg DSN that reaches it."""

    name: str
    """`host:port`, as logs, metrics and `/readyz` show it."""
    dsn: str


def endpoints(database_url: str) -> tuple[list[Endpoint], bool]:
    """The URL's hosts, each as a DSN of its own (the URL's other parameters kept), and whether
    only a read-write server will do (`target_session_attrs`; read-write by default when the URL
    names several hosts)."""
    url = make_url(database_url).set(drivername="postgresql")
    query = dict(url.query)
    hosts = query.pop("host", ())
    listed = [hosts] if isinstance(hosts, str) else list(hosts)
    attrs = query.pop("target_session_attrs", None)
    if isinstance(attrs, tuple):
        attrs = attrs[-1]
    read_write = attrs == "read-write" if attrs is not None else len(listed) > 1
    if not listed:
        listed = [f"{url.host or '127.0.0.1'}:{url.port or 5432}"]
    found = []
    for entry in listed:
        if entry.startswith("/"):  # a Unix socket folder: asyncpg takes it as `?host=`
            # `/folder:5433` in a multi-host URL (SQLAlchemy wants every host's port there)
            folder, _, port = entry.rpartition(":") if ":" in entry else (entry, "", "")
            if not port.isdigit():
                folder, port = entry, str(query.get("port") or url.port or 5432)
            single = url.set(host=None, port=None, query={**query, "host": folder, "port": port})
            name = f"{folder}:{port}"
        else:
            host, _, port = entry.rpartition(":") if ":" in entry else (entry, "", "")
            port_number = int(port) if port else (url.port or 5432)
            single = url.set(host=host, port=port_number, query=query)
            name = f"{host}:{port_number}"
        found.append(Endpoint(name, single.render_as_string(hide_password=False)))
    return found, read_write


_UNUSABLE = (
    OSError,  # refused, reset, the per-host timeout (TimeoutError)
    asyncpg.PostgresError,  # starting up, shutting down, too many connections
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # TargetServerAttributeNotMatched: a standby
)


class Primary:
    """Connects to whichever host of the URL is the writable primary; see the module docstring.
    One per process, shared by both pools."""

    def __init__(
        self,
        database_url: str,
        *,
        attempt_timeout: float = 2.0,
        probe_interval: float = 1.0,
    ) -> None:
        self.endpoints, self.read_write = endpoints(database_url)
        self.attempt_timeout = attempt_timeout
        self.probe_interval = probe_interval
        self.current: str | None = None
        """The host the last connection reached (`host:port`), None before the first."""
        self.changed_at: float | None = None
        """`time.monotonic()` when connections last moved to another host."""
        self._first = 0
        self._open: weakref.WeakSet[BillingConnection] = weakref.WeakSet()
        self._watching: asyncio.Task[None] | None = None

    async def connect(self, *_dsn: object, **kwargs: Any) -> BillingConnection:
        """A new connection to the primary: each host in turn, the last one that answered first,
        each within `attempt_timeout`. Raises the last host's error when none will do. Takes
        `asyncpg.connect`'s keywords (as an asyncpg pool's `connect=` callback does; the DSN
        it passes, None, is ignored)."""
        kwargs.pop("loop", None)
        kwargs["connection_class"] = BillingConnection
        count = len(self.endpoints)
        error: BaseException | None = None
        for step in range(count):
            index = (self._first + step) % count
            endpoint = self.endpoints[index]
            try:
                connection = await asyncpg.connect(
                    endpoint.dsn,
                    timeout=self.attempt_timeout,
                    target_session_attrs="read-write" if self.read_write else "any",
                    **kwargs,
                )
            except _UNUSABLE as exc:
                # Refused, frozen (the per-host timeout), a standby, still starting: the next.
                error = exc
                continue
            assert isinstance(connection, BillingConnection)
            connection.endpoint = endpoint.name
            self._first = index
            self._arrived(endpoint.name)
            self._open.add(connection)
            return connection
        assert error is not None
        # One type for "no primary now", whatever the last host said: raised raw through
        # SQLAlchemy's pool (an engine's creator is not the DBAPI), so it has its own 503 handler.
        raise NoPrimary(f"no host of the URL takes writes: {type(error).__name__}") from error

    def _arrived(self, name: str) -> None:
        previous, self.current = self.current, name
        if previous is None or previous == name:
            return
        # Another host took writes: the old primary is done for this process. Close (never
        # cancel) what is still open to it, so requests stuck on it fail now and retry here.
        stale = [c for c in self._open if c.endpoint != name and not c.is_closed()]
        for connection in stale:
            connection.terminate()
        self.changed_at = time.monotonic()
        DATABASE_PRIMARY_CHANGES.inc()
        log.warning("database_primary_changed", old=previous, new=name, closed=len(stale))

    async def probe(self) -> None:
        """Check that the current primary still answers as one within `attempt_timeout`; if not,
        connect again (which moves to another host if one is writable now)."""
        if self.current is None:
            return
        try:
            connection = await self.connect()
        except _UNUSABLE:
            return  # nothing writable now: keep what is open (the old primary may come back)
        try:
            async with asyncio.timeout(self.attempt_timeout):
                await connection.fetchval("SELECT 1")
        except _UNUSABLE:
            pass
        finally:
            connection.terminate()

    def watch(self) -> None:
        """Probe every `probe_interval` seconds in the background until `stop()`."""
        if self._watching is None and self.probe_interval > 0 and len(self.endpoints) > 1:
            self._watching = asyncio.create_task(self._watch(), name="database-primary-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                await self.probe()
            except Exception:  # pragma: no cover - the watch must outlive any surprise
                log.exception("database_probe_failed")

    async def stop(self) -> None:
        task, self._watching = self._watching, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def finish(work: Awaitable[_T]) -> _T:
    """Await `work` to its end even if the caller is cancelled meanwhile (a client went away, a
    timeout): a COMMIT interrupted by a cancel would let PostgreSQL stop waiting for the
    synchronous standby and keep a write no standby may have. The caller's cancellation is
    raised once `work` is over."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result
