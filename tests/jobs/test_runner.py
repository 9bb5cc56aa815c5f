"""JobRunner: a run in progress finishes when the stop allows it the time, and is cancelled when
it does not; no new run starts once stopping."""

from __future__ import annotations

import asyncio

from app.jobs.runner import Job, JobRunner


async def _started(runner: JobRunner, name: str) -> None:
    async with asyncio.timeout(10):
        while name not in runner.running:
            await asyncio.sleep(0.01)


async def test_stop_lets_a_running_run_finish_within_the_grace() -> None:
    finished: list[str] = []

    async def slow() -> None:
        await asyncio.sleep(0.3)
        finished.append("done")

    runner = JobRunner([Job("slow", 0.01, slow)])
    runner.start()
    await _started(runner, "slow")
    await runner.stop(grace=5)

    assert finished == ["done"]  # the run in progress, and no further one
    assert runner.running == set()


async def test_stop_cancels_a_run_that_outlasts_the_grace() -> None:
    finished: list[str] = []
    cancelled: list[str] = []

    async def stuck() -> None:
        try:
            await asyncio.sleep(30)
            finished.append("done")
        except asyncio.CancelledError:
            cancelled.append("cancelled")
            raise

    runner = JobRunner([Job("stuck", 60, stuck)])
    runner.start()
    await _started(runner, "stuck")
    async with asyncio.timeout(5):
        await runner.stop(grace=0.2)

    assert (finished, cancelled) == ([], ["cancelled"])


async def test_an_idle_job_stops_at_once() -> None:
    runs: list[int] = []

    async def quick() -> None:
        runs.append(1)

    runner = JobRunner([Job("quick", 3600, quick)])
    runner.start()
    async with asyncio.timeout(10):
        while not runs:
            await asyncio.sleep(0.01)
    async with asyncio.timeout(2):  # not the hour until its next run
        await runner.stop(grace=30)
    assert runs == [1]
