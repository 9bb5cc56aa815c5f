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

Reserves and captures of holds go the same way past a lower bound of their own (`Lane`s of one
`Slots`, `gateway_holds_in_flight`: the bound counts every gateway write statement in flight,
debits, reserves and captures alike; alone, a reserve or a capture costs PostgreSQL several
times its share of a batch, so they wait sooner),
each operation's waiting items as one statement of their own (`reserve_batch`,
`capture_batch`), whose outcomes are those of applying them one by one in arrival order; they
have no per-wallet combining (a capture names no wallet).

An answer is given only once the debit's transaction committed, as before. A request cancelled
while its debit waits leaves the debit queued: it is applied (or refused) with the others, as a
debit whose statement had started would be.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from typing import Any, Generic, TypeVar

from app.metrics import USAGE_DEBITS_COMBINED
from app.usage.store import BatchOutcome, Debited, UsageDebit
from app.waiting import answer_waiting, fail_waiting

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_COMBINED = 1000
"""The most items one combined batch carries (the batch API's own limit)."""

MIN_COMBINED = 4
"""The fewest waiting items that go as one batch (fewer go one by one; see above)."""


class Slots:
    """The bound shared by the lanes of one process: at most `bound` statements in flight at
    once, whichever lane sent them (None: no bound, no queue across wallets)."""

    def __init__(self, bound: int | None) -> None:
        if bound is not None and bound < 1:
            raise ValueError("bound: at least one statement in flight")
        self.bound = bound
        self.busy = 0
        """Statements in flight now: items alone, combined batches, of every lane."""
        self._lanes: list[Lane[Any, Any]] = []

    def join(self, lane: Lane[Any, Any]) -> None:
        self._lanes.append(lane)

    def full(self, bound: int | None = None) -> bool:
        """Whether an item must wait: the bound (or a lane's own, lower, `bound`) reached, or
        items already waiting."""
        if self.bound is None:
            return False
        return self.busy >= self._of(bound) or any(lane.queued for lane in self._lanes)

    def _of(self, bound: int | None) -> int:
        assert self.bound is not None
        return self.bound if bound is None else min(bound, self.bound)

    def drain(self) -> None:
        """A statement is done: send what waits in the lanes, while there is room (each lane's
        four or more as one batch of up to `MAX_COMBINED`, else its first alone; a lane with
        a bound of its own only while fewer than it are in flight), the lane whose first item
        waited longest first."""
        while self.bound is not None and self.busy < self.bound:
            waiting = [
                lane for lane in self._lanes if lane.queued and self.busy < self._of(lane.bound)
            ]
            if not waiting:
                return
            min(waiting, key=lambda lane: lane.queued[0][2]).send_queued()


class Lane(Generic[Item, Result]):
    """`submit()`: one item of one operation, applied alone, or past the `slots`' bound with the
    others of its operation that wait, and (with `key`) combined with those of its key (its
    wallet) that arrived while one of its key's was in flight (see above)."""

    def __init__(
        self,
        alone: Callable[[Item], Awaitable[Result]],
        batch: Callable[[Sequence[Item]], Awaitable[list[Result | Exception]]],
        slots: Slots,
        *,
        key: Callable[[Item], Hashable] | None = None,
        combine: bool = True,
        min_batch: int = MIN_COMBINED,
        counted: Callable[[int], None] | None = None,
        bound: int | None = None,
    ) -> None:
        self._alone = alone
        self.bound = bound
        """The lane's own bound, below the slots': its items wait once that many statements
        (of any lane) are in flight (None: the slots' bound)."""
        self._batch = batch
        self._slots = slots
        slots.join(self)
        self._key = key
        """The item's wallet: items of one key wait for the one in flight, and a batch takes
        its items sorted by key (stably). None: no per-key combining, batches in arrival
        order."""
        self._min_batch = min_batch
        self.combine = combine
        """False: every item goes alone (concurrent debits of a wallet queue on its row lock in
        PostgreSQL, as they do across processes)."""
        self._counted = counted
        self._waiting: dict[Hashable, list[tuple[Item, asyncio.Future[Result | Exception]]]] = {}
        """By key: the items waiting for the one in flight. A key is a key here exactly while
        an item (or a combined batch) of it is in flight."""
        self._running: set[asyncio.Task[None]] = set()
        self.queued: list[tuple[Item, asyncio.Future[Result | Exception], int]] = []
        """Items of any key waiting for a statement to be done (the bound reached), each with
        its place in the process's arrival order."""

    @property
    def in_flight(self) -> int:
        """Keys (wallets) with an item in flight now."""
        return len(self._waiting)

    @property
    def statements_in_flight(self) -> int:
        return self._slots.busy

    async def submit(self, item: Item) -> Result:
        if not self.combine:
            return await self._alone(item)
        key = self._key(item) if self._key is not None else None
        if key is not None:
            waiting = self._waiting.get(key)
            if waiting is not None:
                future: asyncio.Future[Result | Exception] = (
                    asyncio.get_running_loop().create_future()
                )
                waiting.append((item, future))
                return _answer(await future)
        if self._slots.full(self.bound):
            future = asyncio.get_running_loop().create_future()
            self.queued.append((item, future, _arrival()))
            return _answer(await future)
        if key is not None:
            self._waiting[key] = []
        self._slots.busy += 1
        try:
            return await self._alone(item)
        finally:
            self._slots.busy -= 1
            if key is not None:
                self._next(key)
            self._slots.drain()

    def _next(self, key: Hashable) -> None:
        """The item or batch in flight for `key` is done: send what waited, if anything."""
        waiting = self._waiting.pop(key)
        if waiting:
            self._waiting[key] = []
            self._start(self._sent(waiting, key))

    def send_queued(self) -> None:
        """Send what waits across keys (the slots have room): four or more as one batch of up
        to `MAX_COMBINED`, else the first alone."""
        if len(self.queued) >= self._min_batch:
            sent, self.queued = self.queued[:MAX_COMBINED], self.queued[MAX_COMBINED:]
        else:
            sent = [self.queued.pop(0)]
        self._start(self._sent([(item, future) for item, future, _ in sent]))

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        self._slots.busy += 1
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _sent(
        self,
        waiting: list[tuple[Item, asyncio.Future[Result | Exception]]],
        key: Hashable | None = None,
    ) -> None:
        """Send `waiting` as one statement; then free its slot, let the next of `key` (the
        wallet whose waiting items these were, if any) go, and send what the bound held back."""
        try:
            await self._send_or_fail(waiting)
        finally:
            self._slots.busy -= 1
            if key is not None:
                self._next(key)
            self._slots.drain()

    async def _send_or_fail(
        self, waiting: list[tuple[Item, asyncio.Future[Result | Exception]]]
    ) -> None:
        try:
            await self._send(waiting)
        except BaseException as exc:  # cancelled (the service stops): none may wait forever
            fail_waiting((future for _, future in waiting), exc)
            raise

    async def _send(self, waiting: list[tuple[Item, asyncio.Future[Result | Exception]]]) -> None:
        if len(waiting) < self._min_batch:
            for item, future in waiting:
                try:
                    done = await self._alone(item)
                except Exception as exc:  # a refusal, or an outage: its request answers it
                    if not future.done():  # (its request was cancelled meanwhile)
                        future.set_exception(exc)
                    continue
                if not future.done():
                    future.set_result(done)
            return
        if self._key is not None:
            # A batch takes its items sorted by key (stably: each wallet's in arrival order).
            key = self._key
            waiting = sorted(waiting, key=lambda entry: key(entry[0]))  # type: ignore[arg-type,return-value]
        for start in range(0, len(waiting), MAX_COMBINED):
            chunk = waiting[start : start + MAX_COMBINED]
            if self._counted is not None:
                self._counted(len(chunk))
            try:
                outcomes = await self._batch([item for item, _ in chunk])
            except Exception as exc:  # an outage: each waiting request answers it
                fail_waiting((future for _, future in chunk), exc)
                continue
            answer_waiting(
                (future, outcome) for (_, future), outcome in zip(chunk, outcomes, strict=True)
            )


_arrivals = 0


def _arrival() -> int:
    global _arrivals
    _arrivals += 1
    return _arrivals


def _answer(outcome: Result | Exception) -> Result:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class Combiner(Lane[UsageDebit, Debited]):
    """`debit()`: one debit, combined with the others of its wallet that wait, and past `bound`
    statements in flight with any others that wait (see above). A lane of debits; its `slots`
    (a bound of its own when none is given) may be shared with the holds' lanes."""

    def __init__(
        self,
        alone: Callable[[UsageDebit], Awaitable[Debited]],
        batch: Callable[[Sequence[UsageDebit]], Awaitable[list[BatchOutcome]]],
        *,
        combine: bool = True,
        min_batch: int = MIN_COMBINED,
        bound: int | None = None,
        slots: Slots | None = None,
    ) -> None:
        super().__init__(
            alone,
            batch,  # type: ignore[arg-type]
            slots if slots is not None else Slots(bound),
            key=_user_of,
            combine=combine,
            min_batch=min_batch,
            counted=USAGE_DEBITS_COMBINED.inc,
        )

    async def debit(self, debit: UsageDebit) -> Debited:
        return await self.submit(debit)


def _user_of(debit: UsageDebit) -> str:
    return debit.user_id


MAX_GROUPED_EVENTS = 10_000
"""The most events one group of batch requests carries (a request is never split)."""

GROUPS_IN_FLIGHT = 2
"""The most group statements of a process in flight at once: two make a pipeline, PostgreSQL
applying one group while this process answers the one before and reads the next."""

MIN_SECOND_GROUP_EVENTS = 2_000
"""The fewest events a group goes with while another is in flight (and never fewer than that
one's): a group statement costs PostgreSQL a fixed part per wallet it names, so small groups
chasing a large one would cost it more per event than they save."""


class BatchGroups:
    """`submit()`: one batch request's debits (in the order they are to be decided), applied
    with those of the batch requests that arrive while a batch statement of this process is in
    flight: group commit. The first request goes at once; the requests that arrive while it
    is in flight wait here and go together as ONE batch (`batch`: one transaction, each wallet
    locked and written once, one WAL flush), up to `MAX_GROUPED_EVENTS` events, their debits
    one request after the other in arrival order: once the group in flight is done or, as a
    second group in flight (`GROUPS_IN_FLIGHT`), as soon as they hold as many events as the
    one in flight and at least `MIN_SECOND_GROUP_EVENTS`. Deciding a group as if its debits
    went one by one in that order decides each request exactly as if the requests of the group
    went one after another in arrival order; a second group in flight locks the wallets the
    first holds only once that one committed (every writer locks limits, then wallets in
    user-id order, then lots, so the two cannot deadlock), as concurrent requests of two
    processes would: each wallet's events are decided one by one against its balance as it
    stands, in some order of the requests in flight (not necessarily the same on every wallet,
    as between processes). An answer is given only once the group's transaction committed; a
    group is applied whole or not at all. A request cancelled while it waits leaves its debits
    queued (applied with the others, as a batch whose statement had started would be).

    Without it, concurrent batch requests over the same wallets (a gateway flushing its usage
    from several connections) each lock every wallet they name and queue on each other's row
    locks, one WAL flush and one wallet row version per request. With one group in flight at
    a time, a closed loop of clients (each waits for its answer before it sends again)
    alternates: PostgreSQL applies a group while this process waits, then this process answers
    the group and reads the next requests while PostgreSQL waits; the second group overlaps
    the two."""

    def __init__(
        self,
        batch: Callable[[Sequence[UsageDebit]], Awaitable[list[BatchOutcome]]],
        *,
        combine: bool = True,
        max_events: int = MAX_GROUPED_EVENTS,
        in_flight: int = GROUPS_IN_FLIGHT,
        min_second: int = MIN_SECOND_GROUP_EVENTS,
    ) -> None:
        self._batch = batch
        self.combine = combine
        """False: every request goes alone (concurrent ones queue on row locks in PostgreSQL)."""
        self._max_events = max_events
        self._in_flight = in_flight
        self._min_second = min_second
        self._queued: collections.deque[
            tuple[Sequence[UsageDebit], asyncio.Future[list[BatchOutcome] | Exception]]
        ] = collections.deque()
        self._queued_events = 0
        self._flying: list[int] = []
        """The events of each group in flight."""
        self._starting: asyncio.Task[None] | None = None
        """The task that takes the next group once the requests ready to run have queued."""
        self._tasks: set[asyncio.Task[None]] = set()
        """The tasks of the groups in flight (the event loop keeps only weak references)."""

    async def submit(self, debits: Sequence[UsageDebit]) -> list[BatchOutcome]:
        if not self.combine:
            return await self._batch(debits)
        future: asyncio.Future[list[BatchOutcome] | Exception] = (
            asyncio.get_running_loop().create_future()
        )
        self._queued.append((debits, future))
        self._queued_events += len(debits)
        self._next()
        return _answer(await future)

    def _may_go(self) -> bool:
        """Whether what is queued may go as a group now."""
        if not self._queued or len(self._flying) >= self._in_flight:
            return False
        if not self._flying:
            return True
        return self._queued_events >= max(self._min_second, sum(self._flying))

    def _next(self) -> None:
        """Start the next group when it may go. It is taken by a task of its own, which runs
        once the callbacks already ready have (requests read meanwhile join it)."""
        if self._starting is None and self._may_go():
            self._starting = task = asyncio.ensure_future(self._go())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _go(self) -> None:
        self._starting = None
        if not self._may_go():
            return
        group = [self._queued.popleft()]
        events = len(group[0][0])
        while self._queued and events + len(self._queued[0][0]) <= self._max_events:
            events += len(self._queued[0][0])
            group.append(self._queued.popleft())
        self._queued_events -= events
        self._flying.append(events)
        try:
            await self._send(group)
        except BaseException as exc:  # cancelled (the service stops): none may wait forever
            fail_waiting((future for _, future in self._queued), exc)
            self._queued.clear()
            self._queued_events = 0
            raise
        finally:
            self._flying.remove(events)
            if self._queued:
                self._next()

    async def _send(
        self,
        group: list[tuple[Sequence[UsageDebit], asyncio.Future[list[BatchOutcome] | Exception]]],
    ) -> None:
        debits = [debit for request, _ in group for debit in request]
        try:
            outcomes = await self._batch(debits)
        except BaseException as exc:  # an outage (each waiting request answers it), or cancelled
            fail_waiting((future for _, future in group), exc)
            if not isinstance(exc, Exception):
                raise
            return
        ends = list(itertools.accumulate(len(request) for request, _ in group))
        answer_waiting(
            (future, outcomes[end - len(request) : end])
            for (request, future), end in zip(group, ends, strict=True)
        )
