"""Answering the requests that wait on a group commit (`usage/combining.py`'s lanes and batch
groups, `webhooks/service.py`'s claim groups, `orders/fulfillment.py`'s details writer): each
waiting request holds a future, and the task that applied the group answers every one still
waiting (one whose request was cancelled meanwhile is done already and left alone); a process
has one such group per session maker and event loop (`PerLoop`)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")


def fail_waiting(futures: Iterable[asyncio.Future[Any]], exc: BaseException) -> None:
    """Answer each future still waiting with `exc` (retrieved here, so that one no request
    awaits any more is not reported as never retrieved)."""
    for future in futures:
        if not future.done():
            future.set_exception(exc)
            future.exception()


def answer_waiting(answers: Iterable[tuple[asyncio.Future[_T], _T]]) -> None:
    """Answer each future still waiting with its result."""
    for future, result in answers:
        if not future.done():
            future.set_result(result)


_K = TypeVar("_K")


class PerLoop(Generic[_K, _T]):
    """`per_loop(key)`: the one `make(key)` of the running event loop (made again for another
    loop: the tests run several), kept while the key lives (a session maker, say)."""

    def __init__(self, make: Callable[[_K], _T]) -> None:
        self._make = make
        self._made: weakref.WeakKeyDictionary[_K, tuple[asyncio.AbstractEventLoop, _T]] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self, key: _K) -> _T:
        loop = asyncio.get_running_loop()
        found = self._made.get(key)
        if found is None or found[0] is not loop:
            found = self._made[key] = (loop, self._make(key))
        return found[1]
