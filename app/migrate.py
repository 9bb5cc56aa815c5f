"""Running alembic from code, inside the caller's event loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import Base

ROOT = Path(__file__).resolve().parent.parent


def alembic_config() -> Config:
    """The project's alembic configuration."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return config


MIGRATION_LOCK_KEY = 0x746F726F75746572
"""The PostgreSQL advisory lock that serialises migrations (`b"torouter"` as an integer)."""


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What `upgrade_head` did: the revision before and after (None: an empty database)."""

    before: str | None
    after: str | None

    def line(self) -> str:
        if self.before == self.after:
            return f"database is at the latest migration ({self.after})"
        return f"database migrated from {self.before or 'empty'} to {self.after}"


async def upgrade_head(engine: AsyncEngine) -> Upgrade:
    """Apply every migration not yet applied. On PostgreSQL, under a transaction-scoped advisory
    lock: replicas starting together queue up, and each one after the first finds the database
    at head and does nothing. Returns what it did, for the one line `torouter-billing migrate`
    prints (alembic's own step-by-step lines are below the log level, `app.logs`)."""

    def _upgrade(connection: Any) -> Upgrade:
        before = MigrationContext.configure(connection).get_current_revision()
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        return Upgrade(before, MigrationContext.configure(connection).get_current_revision())

    async with engine.begin() as connection:
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )
        upgrade = await connection.run_sync(_upgrade)
    return upgrade


async def schema_differences(engine: AsyncEngine) -> list[Any]:
    """What autogenerate would change: empty when the models and the database agree."""

    def _compare(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(_compare)
