"""Debits of one wallet that arrive while one of its debits is in flight go as one batch.

A hot wallet (an agent loop, a whole team spending on one account) makes each of its debits
queue on the wallet row's lock in PostgreSQL: each waits, wakes, re-checks the row version it
finds and, for a wallet with credit lots, locks and re-reads the lots again, and each commits (a
WAL flush) while the next waits. That wallet is served one flush at a time, however many
connections wait, and the waiting costs the server more than the debits.

In this process, a debit of a wallet that has a debit in flight waits here instead, on a future;
when the one in flight is done, every debit that waited goes as one batch (`debit_batch`: one
transaction, the wallet locked once, one flush), whose outcomes are exactly those of applying
the debits one by one in the order they arrived (`app.usage.batch`). Fewer than `MIN_COMBINED`
that waited go one after another as one-statement debits, in the order they arrived: a batch
statement costs PostgreSQL a fixed ~1 ms plus tens of µs per event, a debit ~0.3 ms, so a batch
pays only from about four debits on; two or three debits of one wallet arriving together, which
many wallets' random traffic makes a few percent of its debits, are no hot wallet (batching
them cost that scenario ~5% of its rate: `make bench-ab`, 0.93x against 0.99x not combining).
A wallet with nothing in flight, the usual case, goes straight to the one-statement debit:
nothing waits, nothing is added to its path but a dictionary lookup.

Across wallets, with a `bound`: at most that many statements (debits alone, combined batches)
are in flight at once. A debit that arrives when as many are, or behind others already waiting
so, waits in one queue of the process, whatever its wallet; when a statement is done, what
waits goes (four or more as one batch of any mix of wallets, in arrival order within each
wallet; fewer one by one). Many wallets' traffic past what PostgreSQL serves one statement at a
time then costs it one statement, one transaction and one WAL flush per batch, not per debit;
below the bound nothing waits.

An answer is given only once the debit's transaction committed, as before. A request cancelled
while its debit waits leaves the debit queued: it is applied (or refused) with the others, as a
debit whose statement had started would be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from app.metrics import USAGE_DEBITS_COMBINED
from app.usage.store import BatchOutcome, Debited, UsageDebit

Alone = Callable[[UsageDebit], Awaitable[Debited]]
Batch = Callable[[Sequence[UsageDebit]], Awaitable[list[BatchOutcome]]]

MAX_COMBINED = 1000
"""The most debits one combined batch carries (the batch API's own limit)."""

MIN_COMBINED = 4
"""The fewest waiting debits that go as one batch (fewer go one by one; see above)."""


Waiting = list[tuple[UsageDebit, "asyncio.Future[BatchOutcome]"]]


class Combiner:
    """`debit()`: one debit, combined with the others of its wallet that wait, and past `bound`
    statements in flight with any others that wait (see above)."""

    def __init__(
        self,
        alone: Alone,
        batch: Batch,
        *,
        combine: bool = True,
        min_batch: int = MIN_COMBINED,
        bound: int | None = None,
    ) -> None:
        if bound is not None and bound < 1:
            raise ValueError("bound: at least one statement in flight")
        self._alone = alone
        self._min_batch = min_batch
        self.combine = combine
        """False: every debit goes alone (concurrent debits of a wallet queue on its row lock in
        PostgreSQL, as they do across processes)."""
        self._batch = batch
        self._waiting: dict[str, list[tuple[UsageDebit, asyncio.Future[BatchOutcome]]]] = {}
        """By user: the debits waiting for the one in flight. A user is a key exactly while a
        debit (or a combined batch) of theirs is in flight."""
        self._running: set[asyncio.Task[None]] = set()
        self._bound = bound
        """The most statements in flight at once (None: no bound, no queue across wallets)."""
        self._busy = 0
        """Statements in flight now: debits alone, combined batches."""
        self._queued: Waiting = []
        """Debits of any wallet waiting for a statement to be done (`bound` reached)."""

    @property
    def in_flight(self) -> int:
        """Wallets with a debit in flight now."""
        return len(self._waiting)

    @property
    def statements_in_flight(self) -> int:
        return self._busy

    def _full(self) -> bool:
        return self._bound is not None and (self._busy >= self._bound or bool(self._queued))

    async def debit(self, debit: UsageDebit) -> Debited:
        if not self.combine:
            return await self._alone(debit)
        waiting = self._waiting.get(debit.user_id)
        if waiting is not None:
            future: asyncio.Future[BatchOutcome] = asyncio.get_running_loop().create_future()
            waiting.append((debit, future))
            return _answer(await future)
        if self._full():
            future = asyncio.get_running_loop().create_future()
            self._queued.append((debit, future))
            return _answer(await future)
        self._waiting[debit.user_id] = []
        self._busy += 1
        try:
            return await self._alone(debit)
        finally:
            self._busy -= 1
            self._next(debit.user_id)
            self._drain()

    def _next(self, user_id: str) -> None:
        """The debit or batch in flight for `user_id` is done: send what waited, if anything."""
        waiting = self._waiting.pop(user_id)
        if waiting:
            self._waiting[user_id] = []
            self._start(self._combined(user_id, waiting))

    def _drain(self) -> None:
        """A statement is done: send what waits across wallets, while there is room (four or
        more as one batch of up to `MAX_COMBINED`, else the first alone)."""
        while self._queued and self._bound is not None and self._busy < self._bound:
            if len(self._queued) >= self._min_batch:
                sent, self._queued = self._queued[:MAX_COMBINED], self._queued[MAX_COMBINED:]
            else:
                sent = [self._queued.pop(0)]
            self._start(self._queued_sent(sent))

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        self._busy += 1
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _combined(self, user_id: str, waiting: Waiting) -> None:
        try:
            await self._send_or_fail(waiting)
        finally:
            self._busy -= 1
            self._next(user_id)
            self._drain()

    async def _queued_sent(self, sent: Waiting) -> None:
        try:
            await self._send_or_fail(sent)
        finally:
            self._busy -= 1
            self._drain()

    async def _send_or_fail(self, waiting: Waiting) -> None:
        try:
            await self._send(waiting)
        except BaseException as exc:  # cancelled (the service stops): none may wait forever
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            raise

    async def _send(self, waiting: Waiting) -> None:
        if len(waiting) < self._min_batch:
            for debit, future in waiting:
                try:
                    done = await self._alone(debit)
                except Exception as exc:  # a refusal, or an outage: its request answers it
                    if not future.done():  # (its request was cancelled meanwhile)
                        future.set_exception(exc)
                    continue
                if not future.done():
                    future.set_result(done)
            return
        # A batch takes its debits sorted by user id (stably: each wallet's in arrival order).
        waiting = sorted(waiting, key=lambda item: item[0].user_id)
        for start in range(0, len(waiting), MAX_COMBINED):
            chunk = waiting[start : start + MAX_COMBINED]
            USAGE_DEBITS_COMBINED.inc(len(chunk))
            try:
                outcomes = await self._batch([debit for debit, _ in chunk])
            except Exception as exc:  # an outage: each waiting request answers it
                for _, future in chunk:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), outcome in zip(chunk, outcomes, strict=True):
                if not future.done():  # (its request was cancelled meanwhile)
                    future.set_result(outcome)


def _answer(outcome: BatchOutcome) -> Debited:
    if isinstance(outcome, Debited):
        return outcome
    raise outcome
