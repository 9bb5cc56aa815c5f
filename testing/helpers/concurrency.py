"""Racing requests: jobs released at the same moment on many concurrent workers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")
IN_FLIGHT = 64
"""How many requests `together` keeps in flight by default."""


async def together(jobs: Sequence[Callable[[], Awaitable[T]]], workers: int = IN_FLIGHT) -> list[T]:
    """Run `jobs` on `workers` concurrent workers, all released at the same moment."""
    gate = asyncio.Event()
    pending = iter(enumerate(jobs))
    results: dict[int, T] = {}

    async def worker() -> None:
        await gate.wait()
        for index, job in pending:
            results[index] = await job()

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    await asyncio.sleep(0.05)  # every worker is now parked on the gate
    gate.set()
    await asyncio.gather(*tasks)
    return [results[i] for i in range(len(jobs))]


_WAITING_ON_A_LOCK = text(
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
    " AND datname = current_database() AND wait_event_type = 'Lock'"
)


async def lock_waited(session: AsyncSession, application_name: str, tries: int = 500) -> bool:
    """Whether a connection named `application_name` came to wait on a lock within `tries`
    polls 10 ms apart, asked on `session` (which may hold the lock)."""
    for _ in range(tries):
        waiting = await session.execute(_WAITING_ON_A_LOCK, {"name": application_name})
        if waiting.scalar_one():
            return True
        await asyncio.sleep(0.01)
    return False
