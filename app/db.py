"""Engine, one transaction per request, and `session_scope()` for jobs and the CLI — and the
transaction policy every module follows.

Transaction policy
------------------
1. **No Stripe call while a transaction or a row lock is open.** A Stripe call may take up to
   `stripe_deadline_seconds` (12 s by default); a connection held that long, by many requests at
   once, empties the pool for everyone (the gateway's debits, `/readyz`, every replica).
2. **Exclusivity comes from a claim, not a held lock.** Work that must not run twice at once
   takes a lease in a short transaction, then calls Stripe with nothing open, then applies the
   answer in a short transaction under the row lock of what it changes:
   - a webhook delivery claims its event id (`stripe_events.lease_until`; a second delivery
     meanwhile is a 409 and Stripe retries it);
   - a refund attempt claims its request (`attempts` + 1 and `next_attempt_at` moved past the
     call's deadline; the reconciler takes over when the lease lapses);
   - the reconciler claims pending orders (`next_check_at`, FOR UPDATE SKIP LOCKED);
   - a purchase writes and commits its order first; the Stripe object is created under the
     idempotency key `order:<id>`, then its ids are stored.
3. **What is applied is idempotent.** Every ledger posting has a unique reference, statuses
   move only forward (`app/orders/state.py`, `app/refunds/state.py`), so an answer applied
   twice, late or after a crash changes nothing more.
4. **One deadline per request or job run** for all its Stripe work
   (`app.stripe_gateway.deadline`); past it the answer is 503 `payment_provider_unavailable`
   with `Retry-After`, and the claim (lease) makes the retry safe.
5. Portal requests that only touch the database run in one request transaction (`SessionDep`);
   the gateway's hot path is single autocommit statements (`app/usage/`).

`tests/test_transaction_policy.py` walks the source for Stripe calls inside `session_scope()`
blocks and in functions that hold a session.

A database outage (the server restarting, our connections terminated, the pool exhausted past
`database_pool_timeout_seconds`, a write refused as read-only by a demoted primary, a COMMIT
that might not have reached the synchronous standby: `app/primary.py`) is
`is_database_outage()`; `app.errors` answers it 503 `service_unavailable` with `Retry-After`,
never a 500. Nothing partial is acknowledged: the request's one transaction dies with its
connection, and the pool pings a connection before handing it out,
so the next request gets a live one.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Generic, NamedTuple, TypeVar

import structlog
from fastapi import Depends, Request
from sqlalchemy import Select, event, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction

from app.config import Settings
from app.primary import Primary, finish, raise_if_unreplicated

log = structlog.get_logger(__name__)


def create_engine(
    settings: Settings, *, statement_timeout_ms: int = 0, primary: Primary | None = None
) -> AsyncEngine:
    """An async engine on PostgreSQL through asyncpg, connecting through `primary` (the service
    shares one with its gateway pool; `app/primary.py`), else one of its own for the URL.

    `statement_timeout_ms` (0: none) cancels any statement of its connections that runs longer:
    the service's engine passes `portal_statement_timeout_ms`, so a long report cannot hold a
    pooled connection for long; migrations and the CLI's commands pass none."""
    database_url = settings.database_url.get_secret_value()
    primary = primary or Primary(
        database_url, attempt_timeout=settings.database_connect_timeout_seconds
    )
    server_settings = {"application_name": APPLICATION_NAME}
    if statement_timeout_ms > 0:
        server_settings["statement_timeout"] = str(statement_timeout_ms)

    async def connect() -> Any:
        connection = await primary.connect(server_settings=server_settings)
        connection.watch_commits()  # for its whole life: `_refuse_unreplicated_commits`
        return connection

    engine = create_async_engine(
        # The dialect reads the first host only for its name; `connect` reaches them all.
        make_url(database_url),
        echo=settings.database_echo,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        # A connection the server dropped while it sat in the pool (a restart, a terminated
        # backend, a failover) is replaced at checkout instead of failing the next request.
        pool_pre_ping=True,
        pool_timeout=settings.database_pool_timeout_seconds,
        async_creator=connect,
    )
    _refuse_unreplicated_commits(engine)
    _ping_in_one_round_trip(engine)
    event.listen(engine.sync_engine, "handle_error", _read_only_is_a_disconnect)
    return engine


def _refuse_unreplicated_commits(engine: AsyncEngine) -> None:
    """Make a COMMIT that PostgreSQL said might not have reached the synchronous standby raise
    `UnreplicatedCommit` (a 503) instead of returning: SQLAlchemy has no event after a commit
    that can still fail it, so the dialect's `do_commit` of this engine is wrapped."""
    dialect = engine.sync_engine.dialect
    commit = dialect.do_commit

    def do_commit(dbapi_connection: Any) -> None:
        commit(dbapi_connection)
        raise_if_unreplicated(dbapi_connection.driver_connection)

    setattr(dialect, "do_commit", do_commit)  # noqa: B010 - an instance's method, on purpose


def _ping_in_one_round_trip(engine: AsyncEngine) -> None:
    """Make the pool's pre-ping one empty statement (`;`, one round trip) instead of the asyncpg
    dialect's BEGIN, `;`, ROLLBACK (three): its transaction is there for pgbouncer's transaction
    mode, which this service does not run behind, and every checkout pays for it. A failure is
    translated as the dialect's own ping translates it, so a dead connection is still a
    disconnect (replaced) and anything else still raises."""
    dialect = engine.sync_engine.dialect

    def do_ping(dbapi_connection: Any) -> bool:
        try:
            dbapi_connection.run_async(lambda connection: connection.fetchrow(";"))
        except Exception as error:
            dbapi_connection._handle_exception(error)  # raises the dialect's DBAPI error
        return True

    setattr(dialect, "do_ping", do_ping)  # noqa: B010 - an instance's method, on purpose


def _read_only_is_a_disconnect(context: Any) -> None:
    # SQLSTATE 25006: this connection reached a primary that has since been demoted (a standby
    # now). Treated as a lost connection, SQLAlchemy discards it and every connection pooled
    # before it; new ones go to the host that takes writes.
    if describe_database_error(context.original_exception).get("sqlstate") == READ_ONLY:
        context.is_disconnect = True


READ_ONLY = "25006"
"""SQLSTATE read_only_sql_transaction: a write sent to a standby."""


APPLICATION_NAME = "billing-portal"
"""The ORM pool's `application_name` (the gateway's asyncpg pool is `billing-gateway`), so
operators (and tests) can tell its connections apart in `pg_stat_activity`."""

_OUTAGE_ERRORS = (OSError, TimeoutError, ConnectionError)


def is_database_outage(exc: BaseException) -> bool:
    """Whether an exception means the database is unreachable or out of connections (retry
    later) rather than a bug or a constraint: a connection lost or refused, a terminated
    backend, a pool timeout."""
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection within pool_timeout
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        return _driver_outage(exc.orig)
    return isinstance(exc, _OUTAGE_ERRORS) or _driver_outage(exc)


def describe_database_error(exc: BaseException) -> dict[str, str]:
    """What a log line may say about a database error: its class, the driver's class under it
    and the SQLSTATE. Never its message: SQLAlchemy's quotes the statement with its parameters
    (user ids, emails, amounts), and the server's may quote values too."""
    fields = {"error": type(exc).__name__}
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        sqlstate = getattr(current, "sqlstate", None)
        if "sqlstate" not in fields and isinstance(sqlstate, str) and sqlstate.isalnum():
            fields["sqlstate"] = sqlstate[:5]
        orig = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        current = orig if orig is not None else current.__cause__
    if len(seen) > 1:
        fields["driver_error"] = type(seen[-1]).__name__
    return fields


def _driver_outage(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, _OUTAGE_ERRORS):
        return True
    # asyncpg's own classes (checked by name: this module does not import the driver, and
    # SQLAlchemy wraps them in its adapter's exception with the original as `__cause__`).
    for cls in type(exc).__mro__:
        if cls.__name__ in _ASYNCPG_OUTAGES:
            return True
    return _driver_outage(exc.__cause__) if exc.__cause__ is not exc else False


_ASYNCPG_OUTAGES = frozenset(
    {
        "PostgresConnectionError",  # connection failures, 08xxx
        "ConnectionDoesNotExistError",  # the connection was closed under us
        "InterfaceError",  # "connection is closed", "another operation is in progress"
        "InternalClientError",
        "OperatorInterventionError",  # 57xxx: admin shutdown, pg_terminate_backend, crash
        "QueryCanceledError",  # 57014: past `portal_statement_timeout_ms` (or cancelled)
        "TooManyConnectionsError",
        "CannotConnectNowError",
        "ReadOnlySQLTransactionError",  # 25006: the host was demoted to a standby (a failover)
        "TargetServerAttributeNotMatched",  # no host of the URL takes writes (yet)
    }
)


def create_session_maker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


Row = TypeVar("Row", bound=DeclarativeBase)


Selected = TypeVar("Selected")


async def one_or_none(
    session: AsyncSession, stmt: Select[Selected], *, for_update: bool = False
) -> Selected | None:
    """The one row (or value) `stmt` selects, or None; locked (FOR UPDATE) when asked."""
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


class RowById(Generic[Row]):
    """A repository's `get_x(session, x_id, *, for_update=False)` of one model: the row with this
    id, re-selected, locked (FOR UPDATE) when asked."""

    def __init__(self, model: type[Row]) -> None:
        self.model = model

    async def __call__(
        self, session: AsyncSession, row_id: str, *, for_update: bool = False
    ) -> Row | None:
        stmt = select(self.model).where(self.model.__table__.c.id == row_id)
        return await one_or_none(session, stmt, for_update=for_update)


@asynccontextmanager
async def session_scope(
    maker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One transaction: commit on success, roll back on any exception."""
    async with maker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        # Shielded: see `app.primary.finish`.
        await finish(session.commit())


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session: one transaction, committed when the endpoint returns and before
    the response is sent, so a failed commit can never become a 2xx."""
    maker: async_sessionmaker[AsyncSession] = request.app.state.session_maker
    async with session_scope(maker) as session:
        yield session


def after_commit(session: AsyncSession, job: Callable[..., object], *args: Any) -> None:
    """Run `job(*args)` once this session's transaction has committed; never if it rolls back.

    The one way to start work after a commit (an auto top-up's charge, the reaction to a
    declined payment): buffered in `session.info`, run by the session's `after_commit` event
    in the order queued, dropped by its rollback. A job may return an awaitable, which runs as
    a task of its own (the request does not wait for it; `after_commit_settled()` does). A
    job's error is logged, never raised into the request or job that committed. A job must
    not use the session: its transaction is over. The gateway's autocommit statements hand
    their jobs to `run_after_commit()` once the statement answered (it committed). A job
    queued inside a savepoint is dropped if that savepoint rolls back."""
    queued = _Queued(job, args, session.sync_session.get_nested_transaction())
    session.info.setdefault(_AFTER_COMMIT, []).append(queued)


class _Queued(NamedTuple):
    job: Callable[..., object]
    args: tuple[Any, ...]
    savepoint: SessionTransaction | None
    """The innermost savepoint open when it was queued (None: the transaction itself)."""

    def inside(self, savepoint: SessionTransaction) -> bool:
        """Queued while `savepoint` (or a savepoint within it) was open."""
        current = self.savepoint
        while current is not None:
            if current is savepoint:
                return True
            current = current.parent
        return False


_AFTER_COMMIT = "after_commit_jobs"
_RUNNING: set[asyncio.Future[Any]] = set()


def run_after_commit(jobs: Iterable[tuple[Callable[..., object], tuple[Any, ...]]]) -> None:
    """Run jobs of a transaction that committed (see `after_commit`)."""
    for job, args in jobs:
        try:
            result = job(*args)
        except Exception:
            log.exception("after_commit_job_failed", job=_job_name(job))
            continue
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            _RUNNING.add(task)
            task.add_done_callback(functools.partial(_job_done, _job_name(job)))


def _job_done(name: str, task: asyncio.Future[Any]) -> None:
    _RUNNING.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("after_commit_job_failed", job=name, exc_info=exc)


def _job_name(job: Callable[..., object]) -> str:
    func = getattr(job, "func", job)  # a functools.partial
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


async def after_commit_settled() -> None:
    """Wait for the after-commit jobs still running (the service's shutdown; tests)."""
    while _RUNNING:
        await asyncio.gather(*list(_RUNNING), return_exceptions=True)


@event.listens_for(Session, "after_commit")
def _run_queued(session: Session) -> None:
    # The event fires for a savepoint's release too: only the outermost commit runs the queue.
    if session.in_nested_transaction():
        return
    run_after_commit((queued.job, queued.args) for queued in session.info.pop(_AFTER_COMMIT, ()))


@event.listens_for(Session, "after_soft_rollback")
def _drop_queued(session: Session, previous_transaction: SessionTransaction) -> None:
    # The outermost transaction rolled back: its work never happened, nor did the work of a
    # savepoint that rolled back; the enclosing transaction's other jobs stay queued.
    if previous_transaction.parent is None:
        session.info.pop(_AFTER_COMMIT, None)
    elif previous_transaction.nested and (queue := session.info.get(_AFTER_COMMIT)):
        queue[:] = [queued for queued in queue if not queued.inside(previous_transaction)]


# scope="function" runs the dependency's exit (the commit) right after the endpoint returns,
# before FastAPI serializes and sends the response.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
