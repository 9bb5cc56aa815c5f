"""`torouter-billing serve` as a real process: SIGTERM stops accepting at once, lets the request in
flight get its answer, and exits 0 within `BILLING_SHUTDOWN_GRACE_SECONDS`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from app.config import Settings
from testing.service_process import ServiceProcess, settings_env
from testing.stripe_peer import StripePeer

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def service(app: Any, settings: Settings, stripe_peer: StripePeer) -> Iterator[ServiceProcess]:
    """The service in its own process, on the test's database (migrated by `app`), with its
    jobs running."""
    env = settings_env(
        settings,
        jobs_enabled=True,
        reconcile_interval_seconds=1,
        shutdown_grace_seconds=8,
        stripe_deadline_seconds=30,
        log_json=False,
    )
    process = ServiceProcess(env, name="serve-test")
    try:
        yield process.start()
    finally:
        process.cleanup()


async def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(
    service: ServiceProcess, stripe_peer: StripePeer, user_headers: Headers
) -> None:
    await stripe_peer.slow_down(2.0, path="/v1/customers", method="POST")
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        slow = asyncio.create_task(
            http.post(
                "/v1/purchase",
                json={"amount": "20.00", "mode": "elements"},
                headers=user_headers("alice", email="alice@example.com"),
            )
        )
        async with asyncio.timeout(10):  # the request is waiting on Stripe
            while not await stripe_peer.requests("/v1/customers", method="POST"):
                await asyncio.sleep(0.05)

        service.terminate()
        started = time.monotonic()
        await asyncio.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            await httpx.AsyncClient(base_url=service.url).get("/healthz")

        answered = await slow
        code = await asyncio.to_thread(service.wait, 20)
        elapsed = time.monotonic() - started

    assert answered.status_code == 201, answered.text
    assert answered.json()["order"]["status"] == "pending"
    assert code == 0, service.log_tail()
    assert elapsed < 8 + 5  # within the grace (generous: never flaky)


@pytest.mark.parametrize("settings_overrides", [{"shutdown_grace_seconds": 1}])
async def test_a_request_outlasting_the_grace_is_cut_and_the_process_still_exits(
    app: Any, settings: Settings, stripe_peer: StripePeer, user_headers: Headers
) -> None:
    env = settings_env(settings, shutdown_grace_seconds=1, stripe_deadline_seconds=60)
    service = ServiceProcess(env, name="serve-grace").start()
    try:
        await stripe_peer.slow_down(30, path="/v1/customers", method="POST")
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as http:
            slow = asyncio.create_task(
                http.post(
                    "/v1/purchase",
                    json={"amount": "20.00", "mode": "elements"},
                    headers=user_headers("alice", email="alice@example.com"),
                )
            )
            async with asyncio.timeout(10):
                while not await stripe_peer.requests("/v1/customers", method="POST"):
                    await asyncio.sleep(0.05)
            service.terminate()
            started = time.monotonic()
            code = await asyncio.to_thread(service.wait, 20)
            elapsed = time.monotonic() - started
            outcome = await asyncio.gather(slow, return_exceptions=True)
    finally:
        service.cleanup()

    assert code == 0
    assert elapsed < 1 + 5  # the 1 s grace, not the 30 s Stripe would take
    [result] = outcome
    # Cut: the connection closed without an answer, or a 5xx; never a 2xx.
    assert isinstance(result, httpx.HTTPError) or (
        isinstance(result, httpx.Response) and result.status_code >= 500
    )


async def test_start_up_moves_what_it_built_out_of_the_collectors_generations() -> None:
    """What start-up built lives as long as the process: once `serve` has started the app, a full
    collection no longer walks it (gc.freeze), so its pauses stay short under load."""
    import gc

    import uvicorn

    from app.serve import GracefulServer

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    server = GracefulServer(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on"))
    server.config.load()
    server.lifespan = server.config.lifespan_class(server.config)
    try:
        await server.startup()
        frozen = gc.get_freeze_count()
        # Everything alive at start-up is there: this module's own objects among them.
        assert frozen > 10_000
        assert sum(1 for _ in gc.get_objects()) < frozen
    finally:
        await server.shutdown()
        gc.unfreeze()
