"""A tiny scheduler: each registered job runs every `interval` seconds in the background until
the application stops. A failing run is logged and counted; the next one runs as planned."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from app.metrics import JOB_RUNS

log = structlog.get_logger(__name__)

JobFunc = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Job:
    """A named coroutine function run every `interval` seconds."""

    name: str
    interval: float
    func: JobFunc


class JobRunner:
    """Runs jobs as asyncio tasks; `stop()` cancels them and waits."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for job in self.jobs:
            self._tasks.append(asyncio.create_task(self._loop(job), name=f"job:{job.name}"))

    async def _loop(self, job: Job) -> None:
        # Jitter the first run so that instances started together do not run in lockstep.
        await asyncio.sleep(random.uniform(0, min(job.interval, 5.0)))
        while True:
            try:
                await job.func()
                JOB_RUNS.labels(job.name, "ok").inc()
            except asyncio.CancelledError:
                raise
            except Exception:
                JOB_RUNS.labels(job.name, "error").inc()
                log.exception("job_failed", job=job.name)
            await asyncio.sleep(job.interval)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
