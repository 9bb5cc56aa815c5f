"""Fixtures: a real database (PostgreSQL, or SQLite with BILLING_TEST_BACKEND=sqlite) migrated
with alembic once per run, each test isolated, the app served over httpx's ASGI transport, and a
check of the ledger's invariants after every test."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

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
from tests.contract import ContractCheck
from tests.notifications.servers import receiver, smtp  # noqa: F401 - fixtures
from tests.stripe_peer.fixtures import (  # noqa: F401 - fixtures
    gateway,
    stripe_peer,
    stripe_peer_server,
    stripe_peer_settings,
)

BACKEND = os.environ.get("BILLING_TEST_BACKEND", "postgres")
PG_ADMIN_URL = os.environ.get(
    "BILLING_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
JWT_SECRET = "test-secret-" + "x" * 40

# The service defaults to production; the tests say what they are. Fixtures pass their settings
# explicitly; this covers code that reads the environment (the CLI, alembic's env.py).
os.environ["BILLING_ENVIRONMENT"] = "test"
os.environ.setdefault("BILLING_JWT_SECRET", JWT_SECRET)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND != "sqlite":
        return
    skip = pytest.mark.skip(reason="meaningful only on PostgreSQL (real concurrency)")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    return f"billing test backend: {BACKEND}"


class Database:
    """The run's database: a URL per test and a way to reset it between tests."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.template_path: Path | None = None
        self.url = ""
        self._tmpdir: str | None = None
        self._counter = 0

    @property
    def is_postgres(self) -> bool:
        return self.backend == "postgres"

    async def create(self) -> None:
        if self.is_postgres:
            name = f"billing_test_{os.getpid()}_{secrets.token_hex(3)}"
            admin = create_engine(
                Settings(environment="test", database_url=PG_ADMIN_URL, jwt_secret=JWT_SECRET)
            )
            async with admin.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
            await admin.dispose()
            self.url = (
                make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
            )
            self.name = name
            await self._migrate(self.url)
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="billing-test-")
            self.template_path = Path(self._tmpdir) / "template.db"
            await self._migrate(f"sqlite+aiosqlite:///{self.template_path}")

    async def _migrate(self, url: str) -> None:
        engine = create_engine(
            Settings(environment="test", database_url=url, jwt_secret=JWT_SECRET)
        )
        await upgrade_head(engine)
        await engine.dispose()

    def url_for_test(self) -> str:
        """PostgreSQL: the one database (reset after each test). SQLite: a fresh copy of the
        migrated template."""
        if self.is_postgres:
            return self.url
        assert self._tmpdir
        assert self.template_path
        self._counter += 1
        path = Path(self._tmpdir) / f"test-{self._counter}.db"
        shutil.copyfile(self.template_path, path)
        return f"sqlite+aiosqlite:///{path}"

    async def reset(self, engine: AsyncEngine) -> None:
        """Empty every table but the seeded system accounts and the alembic version."""
        if not self.is_postgres:
            return
        tables = [t.name for t in Base.metadata.sorted_tables if t.name != "accounts"]
        async with engine.begin() as conn:
            # The app's engine may carry a short `statement_timeout` (a test of it).
            await conn.execute(text("SET LOCAL statement_timeout = 0"))
            await conn.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
            await conn.execute(text("DELETE FROM accounts WHERE kind = 'wallet'"))

    async def drop(self) -> None:
        if self.is_postgres:
            admin = create_engine(
                Settings(environment="test", database_url=PG_ADMIN_URL, jwt_secret=JWT_SECRET)
            )
            async with admin.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            await admin.dispose()
        elif self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


@pytest.fixture(scope="session")
async def database() -> AsyncIterator[Database]:
    db = Database(BACKEND)
    await db.create()
    yield db
    await db.drop()


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
        "database_url": database.url_for_test(),
        "database_pool_size": 40,
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


@pytest.fixture
async def app(settings: Settings, database: Database) -> AsyncIterator[Any]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
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
