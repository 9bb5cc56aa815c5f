"""The suite's own isolation: the tables are emptied after every test even when work the test
left running (an after-commit job) still writes while they are emptied."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, insert, select, text

from app.ids import new_id
from app.models import AuditEntry
from testing.fixtures.app import Database


async def _waiting_on_a_lock(app: Any) -> bool:
    async with app.state.engine.connect() as conn:
        waiting = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'TRUNCATE%'"
            )
        )
    return bool(waiting)


async def test_the_reset_runs_again_when_it_deadlocks_with_work_the_test_left_running(
    app: Any, database: Database
) -> None:
    engine = app.state.engine
    async with engine.connect() as late:
        await late.begin()
        # Late work holds a table the reset locks after others, then wants one it locks first:
        # the way an order's details are written (orders, then notifications and saved cards).
        # Its deadlock check comes later than the reset's, so PostgreSQL aborts the reset.
        await late.execute(text("SET LOCAL deadlock_timeout = '10s'"))
        await late.execute(text("LOCK TABLE orders IN ROW EXCLUSIVE MODE"))
        reset = asyncio.create_task(database.reset(engine))
        for _ in range(200):
            if await _waiting_on_a_lock(app):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the reset never waited on the late work's lock")
        await late.execute(
            insert(AuditEntry).values(
                id=new_id("aud"),
                actor_user_id="cli:test",
                action="late.work",
                subject_type="test",
                subject_id="1",
            )
        )
        await late.commit()
    await asyncio.wait_for(reset, timeout=30)
    # The reset that PostgreSQL aborted ran again after the late work committed, and emptied it.
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(AuditEntry)) == 0
