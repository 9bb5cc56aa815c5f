"""`torouter-billing serve`: uvicorn, with a bounded graceful shutdown.

On SIGTERM (or SIGINT) the process

1. stops accepting: the listening socket is closed at once, so a new connection is refused and
   the load balancer moves on to another instance;
2. lets in-flight requests finish (idle keep-alive connections are closed; a busy one is closed
   after its answer) and, at the same time, tells the periodic jobs to stop after their current
   run (`JobRunner.stop`);
3. after `BILLING_SHUTDOWN_GRACE_SECONDS` (default 20) cancels whatever is still running (its
   transaction rolls back; the reconciler picks up anything left), then disposes of the pools and
   exits 0.

A second Ctrl-C (SIGINT) exits at once. Kubernetes' default `terminationGracePeriodSeconds` is 30,
so the default grace fits inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import Iterator
from typing import Any

import structlog
import uvicorn
from uvicorn.supervisors import Multiprocess

from app.config import Settings
from app.metrics import SHUTDOWN_IN_FLIGHT

log = structlog.get_logger(__name__)


def freeze_startup_objects() -> int:
    """Move what start-up built (modules, the app, its pools and prepared statements: ~160,000
    objects the collector tracks, all living as long as the process) out of the collector's
    generations, so that a full collection scans only what requests made since. Unfrozen, each
    full collection walked them all: 30-130 ms with the event loop stopped (measured on this
    machine), every request in flight waiting, which is what a latency percentile sees.
    Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GracefulServer(uvicorn.Server):
    """uvicorn's server, stopping the app's jobs while it drains requests, and exiting 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the signal once it has shut down, so the process would die of
            # it (exit -15); a drained shutdown is a clean exit.
            self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        log.info("startup_objects_frozen", objects=freeze_startup_objects())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        grace = self.config.timeout_graceful_shutdown or 0
        in_flight = len(self.server_state.tasks)
        SHUTDOWN_IN_FLIGHT.set(in_flight)
        log.info("shutdown_started", in_flight=in_flight, grace_seconds=grace)
        jobs = self._stop_jobs(grace)
        await super().shutdown(sockets)
        if jobs is not None:
            await jobs
        SHUTDOWN_IN_FLIGHT.set(0)
        log.info("shutdown_finished")

    def _stop_jobs(self, grace: float) -> asyncio.Task[None] | None:
        app: Any = self.config.loaded_app
        # The loaded app may be wrapped by uvicorn's middleware (proxy headers, …).
        while app is not None and not hasattr(app, "state"):
            app = getattr(app, "app", None)
        runner = getattr(getattr(app, "state", None), "job_runner", None)
        if runner is None:
            return None
        return asyncio.get_running_loop().create_task(runner.stop(grace))


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int = 1,
    forwarded_allow_ips: str | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully (see the module docstring)."""
    config = uvicorn.Config(
        "app.main:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        # Only these peers' X-Forwarded-For/-Proto are believed (the load balancer's).
        forwarded_allow_ips=forwarded_allow_ips or settings.forwarded_allow_ips,
        log_config=None,
        # `RequestContextMiddleware` logs every portal request with its id; the gateway's app
        # logs its failures (its successes are counted in /metrics).
        access_log=False,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=int(max(1, round(settings.shutdown_grace_seconds))),
    )
    if workers > 1:
        # uvicorn's process supervisor forwards SIGTERM; each worker drains its requests within
        # the grace, and its jobs are cancelled in the lifespan shutdown after that.
        sock = config.bind_socket()
        Multiprocess(config, sockets=[sock]).run()
        return 0
    GracefulServer(config).run()
    return 0
