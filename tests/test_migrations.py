"""Migrations build the schema the models describe, from an empty database."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import create_engine
from app.migrate import schema_differences, upgrade_head
from tests.conftest import Database


async def test_migrations_leave_nothing_for_autogenerate(app: Any) -> None:
    # The run's database was created empty and migrated with `alembic upgrade head`.
    assert await schema_differences(app.state.engine) == []
    async with app.state.engine.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    from alembic.script import ScriptDirectory

    from app.migrate import alembic_config

    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_replicas_migrating_at_once_take_turns_under_the_advisory_lock(
    database: Database,
) -> None:
    name = f"billing_migrate_{secrets.token_hex(4)}"
    admin = create_engine(Settings(environment="test", database_url=database.admin_url))
    async with admin.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(database.admin_url).set(database=name).render_as_string(hide_password=False)
    engines = [create_engine(Settings(environment="test", database_url=url)) for _ in range(3)]
    try:
        # Without the lock, the second CREATE TABLE waits for the first and then fails.
        await asyncio.gather(*(upgrade_head(engine) for engine in engines))
        async with engines[0].connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert len(versions) == 1
    finally:
        for engine in engines:
            await engine.dispose()
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
