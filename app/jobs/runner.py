"""A tiny scheduler: each registered job runs every `interval` seconds in the background until
the application stops. A failing run is logged and counted; the next one runs as planned.

Each run has a Stripe budget of its own (`app.stripe_gateway.deadline`): `stripe_deadline_seconds`,
by default the job's interval, so runs cannot pile up behind a slow Stripe. A job that handles
many items opens a shorter `stripe_budget()` per item inside it.

`stop(grace)` lets running runs finish (up to `grace` seconds) before it cancels them: graceful
shutdown (`app/serve.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from app.metrics import JOB_RUNS
from app.stripe_gateway.deadline import stripe_budget

log = structlog.get_logger(__name__)

JobFunc = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Job:
    """A named coroutine function run every `interval` seconds."""

    name: str
    interval: float
    func: JobFunc
    stripe_deadline_seconds: float | None = None
    """The Stripe budget of one run (None: the interval)."""


class JobRunner:
    """Runs jobs as asyncio tasks; `stop()` cancels them and waits."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[str] = set()
        self._stopping = asyncio.Event()

    def start(self) -> None:
        for job in self.jobs:
            self._tasks.append(asyncio.create_task(self._loop(job), name=f"job:{job.name}"))

    async def _loop(self, job: Job) -> None:
        # Jitter the first run so that instances started together do not run in lockstep.
        await self._pause(random.uniform(0, min(job.interval, 5.0)))
        while not self._stopping.is_set():
            self._running.add(job.name)
            try:
                with stripe_budget(job.stripe_deadline_seconds or job.interval):
                    await job.func()
                JOB_RUNS.labels(job.name, "ok").inc()
            except asyncio.CancelledError:
                raise
            except Exception:
                JOB_RUNS.labels(job.name, "error").inc()
                log.exception("job_failed", job=job.name)
            finally:
                self._running.discard(job.name)
            await self._pause(job.interval)

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less when `stop()` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    @property
    def running(self) -> set[str]:
        """Names of the jobs in the middle of a run."""
        return set(self._running)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop scheduling runs; let running ones finish for up to `grace` seconds, then
        cancel whatever is left and wait for it."""
        self._stopping.set()
        if grace > 0 and self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            if pending:
                log.warning("jobs_cut_short", jobs=sorted(self._running))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
