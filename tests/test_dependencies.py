"""Every endpoint and dependency of the app is a coroutine (or an async generator): FastAPI runs
a plain `def` one in its threadpool, a thread hop per dependency per request (issue 22: the
webhook route had three, the getters of `app/deps.py`)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant

from app.config import get_settings
from app.main import create_app
from app.openapi import api_routes


def _calls(dependant: Dependant) -> Iterator[Any]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def _awaited(call: Any) -> bool:
    """Whether FastAPI awaits `call` on the event loop (a coroutine or async generator function,
    or an object whose `__call__` is one) rather than sending it to its threadpool."""
    if inspect.isclass(call):
        return False
    func = call if inspect.isroutine(call) else type(call).__call__
    return inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)


def test_no_endpoint_or_dependency_runs_in_the_threadpool() -> None:
    routes = list(api_routes(create_app(get_settings())))
    assert len(routes) > 50
    threaded = sorted(
        f"{sorted(route.methods)} {route.path_format}: {getattr(call, '__qualname__', call)}"
        for route in routes
        for call in _calls(route.dependant)
        if not _awaited(call)
    )
    assert threaded == []


def test_httpcore_finds_sniffio_without_searching_the_disk() -> None:
    # httpcore imports sniffio inside its calls, several per Stripe request: a missing module
    # is searched for on sys.path each time (a lasting cost of the Stripe reads).
    import sniffio

    async def library() -> str:
        return sniffio.current_async_library()

    assert asyncio.run(library()) == "asyncio"
