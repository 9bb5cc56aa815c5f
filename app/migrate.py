"""Running alembic from code, inside the caller's event loop."""

from __future__ import annotations

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


async def upgrade_head(engine: AsyncEngine) -> None:
    """Apply every migration not yet applied. On PostgreSQL, under a transaction-scoped advisory
    lock: replicas starting together queue up, and each one after the first finds the database
    at head and does nothing."""

    def _upgrade(connection: Any) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        await connection.run_sync(_upgrade)


async def schema_differences(engine: AsyncEngine) -> list[Any]:
    """What autogenerate would change: empty when the models and the database agree."""

    def _compare(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(_compare)
