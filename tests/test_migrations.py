"""Migrations build the schema the models describe, from an empty database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.migrate import schema_differences


async def test_migrations_leave_nothing_for_autogenerate(app: Any) -> None:
    # The run's database was created empty and migrated with `alembic upgrade head`.
    assert await schema_differences(app.state.engine) == []
    async with app.state.engine.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    from alembic.script import ScriptDirectory

    from app.migrate import alembic_config

    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
