"""Migrations build the schema the models describe, from an empty database."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import create_engine
from app.migrate import schema_differences, upgrade_head
from tests.conftest import PG_ADMIN_URL


async def test_migrations_leave_nothing_for_autogenerate(app: Any) -> None:
    # The run's database was created empty and migrated with `alembic upgrade head`.
    assert await schema_differences(app.state.engine) == []
    async with app.state.engine.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    from alembic.script import ScriptDirectory

    from app.migrate import alembic_config

    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()


@pytest.mark.postgres_only
async def test_replicas_migrating_at_once_take_turns_under_the_advisory_lock() -> None:
    name = f"billing_migrate_{secrets.token_hex(4)}"
    admin = create_engine(Settings(environment="test", database_url=PG_ADMIN_URL))
    async with admin.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
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


async def test_existing_service_tokens_keep_every_scope(tmp_path: Any) -> None:
    """Tokens made before scopes existed get all three, so existing gateways keep working."""
    from alembic import command
    from alembic.script import ScriptDirectory

    from app.auth.service_tokens import SCOPES
    from app.migrate import alembic_config
    from tests.conftest import BACKEND

    before_scopes = ScriptDirectory.from_config(alembic_config()).get_revision("0015").down_revision
    name = f"billing_scopes_{secrets.token_hex(4)}"
    admin = create_engine(Settings(environment="test", database_url=PG_ADMIN_URL))
    if BACKEND == "postgres":
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'scopes.db'}"
    engine = create_engine(Settings(environment="test", database_url=url))

    def _to(revision: str) -> Any:
        def run(connection: Any) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        return run

    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to(str(before_scopes)))
            await conn.execute(
                text(
                    "INSERT INTO service_tokens (id, name, token_hash, created_at) "
                    "VALUES ('svt_old', 'old', :hash, CURRENT_TIMESTAMP)"
                ),
                {"hash": "0" * 64},
            )
        await upgrade_head(engine)
        async with engine.connect() as conn:
            scopes = (await conn.execute(text("SELECT scopes FROM service_tokens"))).scalar_one()
        assert set(scopes.split()) == set(SCOPES)
    finally:
        await engine.dispose()
        if BACKEND == "postgres":
            async with admin.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
