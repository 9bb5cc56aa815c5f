"""Fixtures: a real PostgreSQL (`BILLING_TEST_DATABASE_URL`, else the server answering on
127.0.0.1:5432, else an embedded one started from the wheel: `dev/postgres.py`), one database per
test process (pytest-xdist workers each make their own) migrated with alembic once, each test
isolated, the app served over httpx's ASGI transport, and a check of the ledger's invariants
after every test."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.jwt import mint_token
from app.auth.service_tokens import create_service_token
from app.config import Settings
from app.db import create_engine, session_scope
from app.ledger.verify import verify_ledger
from app.main import create_app
from app.migrate import upgrade_head
from app.models import Base
from app.rate_limits import SCOPES
from app.wiring import wire
from dev.postgres import server_for_tests
from tests.contract import ContractCheck
from tests.notifications.servers import receiver, smtp  # noqa: F401 - fixtures
from tests.stripe_peer.fixtures import (  # noqa: F401 - fixtures
    gateway,
    stripe_peer,
    stripe_peer_server,
    stripe_peer_settings,
)

JWT_SECRET = "test-secret-" + "x" * 40

# The service defaults to production; the tests say what they are. Fixtures pass their settings
# explicitly; this covers code that reads the environment (the CLI, alembic's env.py).
os.environ["BILLING_ENVIRONMENT"] = "test"
os.environ.setdefault("BILLING_JWT_SECRET", JWT_SECRET)
# What `create_app()` does first: tests that post to the ledger or open a `UsageStore` without an
# app need the domains subscribed too (`app/wiring.py`).
wire()


TEST_POOL_SIZE = 5
"""Each test app's pools: the gateway's asyncpg pool up to this many connections, the ORM's up
to twice as many. Small, so that the suite's workers side by side fit in a quarter of
`max_connections` (the rest may be taken by others on a shared server)."""
RACE_POOL_SIZE = 10
"""The same for the tests that race many requests: enough connections in flight at once for
the races to happen in PostgreSQL's row locks, few enough for two workers to race at once."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `make test-fast` deselects these: every test that reaches the database.
    for item in items:
        if "database" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.database)


class Database:
    """The test process's database: created and migrated once, emptied after each test."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        """A database on the same server to create and drop ours from."""
        self.name = f"billing_test_{os.getpid()}_{secrets.token_hex(3)}"
        self.url = make_url(admin_url).set(database=self.name).render_as_string(False)

    async def create(self) -> None:
        await self.admin(f'CREATE DATABASE "{self.name}"')
        engine = create_engine(self.settings(self.url))
        await upgrade_head(engine)
        await engine.dispose()

    @staticmethod
    def settings(url: str) -> Settings:
        return Settings(environment="test", database_url=url, jwt_secret=JWT_SECRET)

    async def admin(self, statement: str) -> None:
        """Run `statement` (CREATE or DROP DATABASE) on the admin database."""
        admin = create_engine(self.settings(self.admin_url))
        try:
            async with admin.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(statement))
        finally:
            await admin.dispose()

    async def reset(self, engine: AsyncEngine) -> None:
        """Empty every table but the seeded system accounts and the alembic version."""
        tables = [t.name for t in Base.metadata.sorted_tables if t.name != "accounts"]
        async with engine.begin() as conn:
            # The app's engine may carry a short `statement_timeout` (a test of it).
            await conn.execute(text("SET LOCAL statement_timeout = 0"))
            await conn.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
            await conn.execute(text("DELETE FROM accounts WHERE kind = 'wallet'"))

    async def drop(self) -> None:
        await self.admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def database() -> AsyncIterator[Database]:
    admin_url, embedded = await server_for_tests()
    db = Database(admin_url)
    await db.create()
    try:
        yield db
    finally:
        await db.drop()
        if embedded is not None:
            embedded.stop()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or with `@pytest.mark.parametrize`) to change settings."""
    return {}


@pytest.fixture
def settings(
    database: Database, settings_overrides: dict[str, Any], request: pytest.FixtureRequest
) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database.url,
        "database_pool_size": TEST_POOL_SIZE,
        "jwt_secret": JWT_SECRET,
        "jobs_enabled": False,
        "service_token_cache_seconds": 0,
        "log_json": True,
        "portal_url": "http://portal.test",
        # Rate limits stay on, wide enough for tests that buy many times; the tests of the
        # limits themselves narrow them (tests/test_rate_limits.py).
        **{f"rate_limit_{scope}": "1000/minute" for scope in SCOPES},
        "rate_limit_stripe_objects_per_day": 1000,
    }
    if "stripe_peer" in request.fixturenames:
        # Point the app at the loopback Stripe peer (tests/stripe_peer/fixtures.py).
        values.update(request.getfixturevalue("stripe_peer_settings"))
    values.update(settings_overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def _started(settings: Settings, stack: AsyncExitStack) -> Any:
    """The app after its lifespan started. A server shared with others (CI's, a developer's)
    may be out of connections for a moment: starting waits for one, a few seconds at most."""
    for attempt in range(10):
        application = create_app(settings)
        try:
            await stack.enter_async_context(application.router.lifespan_context(application))
        except asyncpg.TooManyConnectionsError:
            if attempt == 9:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))
        else:
            return application
    raise AssertionError("unreachable")


@pytest.fixture
async def app(settings: Settings, database: Database) -> AsyncIterator[Any]:
    async with AsyncExitStack() as stack:
        application = await _started(settings, stack)
        yield application
        # Every test leaves a sound ledger behind, whatever it did.
        async with session_scope(application.state.session_maker) as session:
            violations = await verify_ledger(session)
        await database.reset(application.state.engine)
        assert not violations, "ledger invariants broken:\n" + "\n".join(map(str, violations))


@pytest.fixture
def session_maker(app: Any) -> async_sessionmaker[AsyncSession]:
    maker: async_sessionmaker[AsyncSession] = app.state.session_maker
    return maker


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app over ASGI; every answer must be declared by its OpenAPI operation
    (tests/contract.py), so each test is also a contract test of what it calls."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://billing.test",
        event_hooks={"response": [ContractCheck.for_app(app)]},
    ) as c:
        yield c


@pytest.fixture
def make_token(settings: Settings) -> Callable[..., str]:
    """`make_token("user-1", email=…, admin=…)` → a portal JWT."""

    def _make(user_id: str, *, email: str | None = None, admin: bool = False) -> str:
        return mint_token(settings, user_id, email=email, admin=admin)

    return _make


@pytest.fixture
def user_headers(make_token: Callable[..., str]) -> Callable[..., dict[str, str]]:
    """`user_headers("user-1")` → Authorization headers for that portal user."""

    def _headers(user_id: str, *, email: str | None = None, admin: bool = False) -> dict[str, str]:
        token = make_token(user_id, email=email or f"{user_id}@example.com", admin=admin)
        return {"Authorization": f"Bearer {token}"}

    return _headers


@pytest.fixture
def admin_headers(user_headers: Callable[..., dict[str, str]]) -> dict[str, str]:
    return user_headers("admin-1", admin=True)


@pytest.fixture
async def gateway_token(session_maker: async_sessionmaker[AsyncSession]) -> str:
    async with session_scope(session_maker) as session:
        _, token = await create_service_token(session, "test-gateway")
    return token


@pytest.fixture
def gateway_headers(gateway_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway_token}"}
