"""Engine, one transaction per request, and `session_scope()` for jobs and the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from app.config import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    """An async engine: asyncpg for PostgreSQL, aiosqlite (WAL, foreign keys) for SQLite."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(
            url,
            echo=settings.database_echo,
            connect_args={"timeout": 30},
            poolclass=NullPool if url.database in (None, "", ":memory:") else None,
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(
        url,
        echo=settings.database_echo,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_pre_ping=False,
        pool_timeout=30,
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that every transaction starts with
        # BEGIN IMMEDIATE: SQLite then serializes writers up front instead of failing one of
        # two read-then-write transactions at commit, so the ledger's rules hold as on PostgreSQL.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_session_maker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def is_postgres_url(database_url: str) -> bool:
    """Whether a database URL names PostgreSQL (as opposed to the embedded SQLite)."""
    return make_url(database_url).get_backend_name() == "postgresql"


def is_postgres(session: AsyncSession) -> bool:
    """Whether the session talks to PostgreSQL (as opposed to the embedded SQLite)."""
    return session.get_bind().dialect.name == "postgresql"


@asynccontextmanager
async def session_scope(
    maker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One transaction: commit on success, roll back on any exception."""
    async with maker() as session, session.begin():
        yield session


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session: one transaction, committed when the endpoint returns and before
    the response is sent, so a failed commit can never become a 2xx."""
    maker: async_sessionmaker[AsyncSession] = request.app.state.session_maker
    async with maker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


# scope="function" runs the dependency's exit (the commit) right after the endpoint returns,
# before FastAPI serializes and sends the response.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
