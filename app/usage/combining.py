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

An answer is given only once the debit's transaction committed, as before. A request cancelled
while its debit waits leaves the debit queued: it is applied (or refused) with the others, as a
debit whose statement had started would be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from app.metrics import USAGE_DEBITS_COMBINED
from app.usage.store import BatchOutcome, Debited, UsageDebit

Alone = Callable[[UsageDebit], Awaitable[Debited]]
Batch = Callable[[Sequence[UsageDebit]], Awaitable[list[BatchOutcome]]]

MAX_COMBINED = 1000
"""The most debits one combined batch carries (the batch API's own limit)."""

MIN_COMBINED = 4
"""The fewest waiting debits that go as one batch (fewer go one by one; see above)."""


class Combiner:
    """`debit()`: one debit, combined with the others of its wallet that wait (see above)."""

    def __init__(
        self, alone: Alone, batch: Batch, *, combine: bool = True, min_batch: int = MIN_COMBINED
    ) -> None:
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

    @property
    def in_flight(self) -> int:
        """Wallets with a debit in flight now."""
        return len(self._waiting)

    async def debit(self, debit: UsageDebit) -> Debited:
        if not self.combine:
            return await self._alone(debit)
        waiting = self._waiting.get(debit.user_id)
        if waiting is not None:
            future: asyncio.Future[BatchOutcome] = asyncio.get_running_loop().create_future()
            waiting.append((debit, future))
            outcome = await future
            if isinstance(outcome, Debited):
                return outcome
            raise outcome
        self._waiting[debit.user_id] = []
        try:
            return await self._alone(debit)
        finally:
            self._next(debit.user_id)

    def _next(self, user_id: str) -> None:
        """The debit or batch in flight for `user_id` is done: send what waited, if anything."""
        waiting = self._waiting.pop(user_id)
        if waiting:
            self._waiting[user_id] = []
            task = asyncio.ensure_future(self._combined(user_id, waiting))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _combined(
        self, user_id: str, waiting: list[tuple[UsageDebit, asyncio.Future[BatchOutcome]]]
    ) -> None:
        try:
            await self._send(waiting)
        except BaseException as exc:  # cancelled (the service stops): none may wait forever
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            raise
        finally:
            self._next(user_id)

    async def _send(self, waiting: list[tuple[UsageDebit, asyncio.Future[BatchOutcome]]]) -> None:
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
