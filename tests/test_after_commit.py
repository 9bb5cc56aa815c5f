"""The one after-commit queue (`app.db.after_commit`): a job runs once its transaction has
committed, never when it rolled back, and its error is logged, not raised into the request or
job that committed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import db
from app.db import after_commit, after_commit_settled, run_after_commit, session_scope

Maker = async_sessionmaker[AsyncSession]


class _Log:
    """Stands in for `app.db.log`: what the queue logged."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def exception(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> _Log:
    log = _Log()
    monkeypatch.setattr(db, "log", log)
    return log


async def test_a_job_runs_after_the_commit_with_its_arguments(session_maker: Maker) -> None:
    ran: list[tuple[Any, ...]] = []
    async with session_scope(session_maker) as session:
        await session.execute(text("SELECT 1"))
        after_commit(session, lambda *args: ran.append(args), "a", 1)
        after_commit(session, lambda *args: ran.append(args), "b", 2)
        await session.execute(text("SELECT 1"))
        assert ran == []  # not before the commit
    assert ran == [("a", 1), ("b", 2)]  # in the order queued


async def test_the_job_sees_what_the_transaction_committed(session_maker: Maker) -> None:
    seen: list[int] = []

    async def count_rows() -> None:
        async with session_scope(session_maker) as other:
            seen.append((await other.execute(text("SELECT count(*) FROM probe"))).scalar_one())

    async with session_scope(session_maker) as session:
        await session.execute(text("CREATE TABLE probe (id int)"))
        await session.execute(text("INSERT INTO probe VALUES (1), (2)"))
        after_commit(session, count_rows)
    await after_commit_settled()
    assert seen == [2]
    async with session_scope(session_maker) as session:
        await session.execute(text("DROP TABLE probe"))


async def test_a_rolled_back_transaction_runs_nothing(session_maker: Maker) -> None:
    ran: list[str] = []

    async def fails_in_the_transaction() -> None:
        async with session_scope(session_maker) as session:
            after_commit(session, ran.append, "dropped")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fails_in_the_transaction()
    async with session_maker() as session:
        await session.begin()
        after_commit(session, ran.append, "rolled back")
        await session.rollback()
        # The session goes on: a later commit runs only what was queued after the rollback.
        await session.begin()
        after_commit(session, ran.append, "committed")
        await session.commit()
    assert ran == ["committed"]


async def test_a_savepoint_does_not_run_the_queue(session_maker: Maker) -> None:
    ran: list[str] = []
    async with session_scope(session_maker) as session:
        after_commit(session, ran.append, "outer")
        async with session.begin_nested():
            after_commit(session, ran.append, "inside the savepoint")
        assert ran == []  # released, but the transaction has not committed
    assert ran == ["outer", "inside the savepoint"]


async def test_a_rolled_back_savepoint_drops_its_jobs_only(session_maker: Maker) -> None:
    ran: list[str] = []
    async with session_scope(session_maker) as session:
        after_commit(session, ran.append, "before")
        undone = await session.begin_nested()
        after_commit(session, ran.append, "in the undone savepoint")
        async with session.begin_nested():
            after_commit(session, ran.append, "in a savepoint inside it")
        await undone.rollback()
        async with session.begin_nested():
            after_commit(session, ran.append, "in a kept savepoint")
        after_commit(session, ran.append, "after")
        assert ran == []
    assert ran == ["before", "in a kept savepoint", "after"]


async def test_an_inner_savepoint_rolled_back_keeps_its_parent_s_jobs(
    session_maker: Maker,
) -> None:
    ran: list[str] = []
    async with session_scope(session_maker) as session:
        async with session.begin_nested():
            after_commit(session, ran.append, "outer savepoint")
            inner = await session.begin_nested()
            after_commit(session, ran.append, "inner savepoint")
            await inner.rollback()
            after_commit(session, ran.append, "outer savepoint, later")
    assert ran == ["outer savepoint", "outer savepoint, later"]


async def test_each_job_runs_once(session_maker: Maker) -> None:
    ran: list[str] = []
    async with session_maker() as session:
        await session.begin()
        after_commit(session, ran.append, "first")
        await session.commit()
        await session.begin()
        await session.commit()
    assert ran == ["first"]


async def test_a_failing_job_is_logged_not_raised(session_maker: Maker, logged: _Log) -> None:
    ran: list[str] = []

    def fails() -> None:
        raise ValueError("job failed")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise ValueError("task failed")

    async with session_scope(session_maker) as session:
        after_commit(session, fails)
        after_commit(session, fails_later)
        after_commit(session, ran.append, "still runs")
    assert ran == ["still runs"]
    await after_commit_settled()
    assert [event for event, _ in logged.events] == ["after_commit_job_failed"] * 2
    names = sorted(str(fields["job"]) for _, fields in logged.events)
    assert names[0].endswith("fails")
    assert names[1].endswith("fails_later")


async def test_a_request_whose_job_fails_still_answers(session_maker: Maker, logged: _Log) -> None:
    # `get_session` (every portal request) commits through the same event.
    from app.db import get_session

    class _State:
        pass

    class _Request:
        app = _State()

    _Request.app.state = _State()  # type: ignore[attr-defined]
    _Request.app.state.session_maker = session_maker  # type: ignore[attr-defined]
    sessions = get_session(_Request())  # type: ignore[arg-type]
    session = await anext(sessions)
    after_commit(session, lambda: 1 / 0)
    with pytest.raises(StopAsyncIteration):
        await anext(sessions)  # the commit, then the job: nothing raised
    assert [event for event, _ in logged.events] == ["after_commit_job_failed"]


async def test_the_gateway_s_statements_use_the_same_runner(logged: _Log) -> None:
    # An autocommit statement has no session: its caller hands the jobs over once it answered.
    ran: list[set[str]] = []
    run_after_commit([(ran.append, ({"user-1"},)), (lambda _: 1 / 0, ({"user-2"},))])
    assert ran == [{"user-1"}]
    assert [event for event, _ in logged.events] == ["after_commit_job_failed"]
