"""Debits combined in the process (`app/usage/combining.py`, on by default): the debits that
arrive while one of the wallet's debits is in flight go together as one batch, and past the
bound of statements in flight those of any wallets do, with exactly the outcomes of applying
them one by one in arrival order."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import InsufficientBalance
from app.ledger.service import insufficient_balance
from app.ledger.verify import verify_ledger
from app.models.base import utcnow
from app.models.ledger import LotSource
from app.usage.combining import MIN_COMBINED, Combiner, Lane, Slots
from app.usage.store import BatchOutcome, Debited, UsageDebit
from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.concurrency import together
from testing.helpers.ledger import debit, deposit, gateway_balance
from testing.helpers.lots import add_lot, booked, remaining, wallet

Maker = async_sessionmaker[AsyncSession]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "database_pool_size": RACE_POOL_SIZE,
        "service_token_cache_seconds": 60,
        "gateway_combine_debits": True,
    }


def combined() -> float:
    return REGISTRY.get_sample_value("billing_usage_debits_combined_total") or 0.0


async def test_400_debits_of_one_wallet_at_once_are_combined_and_exact(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    await gateway_balance(client, gateway_headers, "alice")  # the token lookup is cached now
    before = combined()
    responses = await together(
        [lambda: debit(client, gateway_headers, "alice", 7_000) for _ in range(400)]
    )
    assert combined() - before > 0, "no debit was combined"
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 142, 402: 258}
    # Each refusal says what was available when its turn came: the last 0.006000.
    assert {r.json()["available_micros"] for r in responses if r.status_code == 402} == {6_000}
    # Every applied debit answers the balance right after it, each a different one.
    balances = sorted(r.json()["balance_micros"] for r in responses if r.status_code == 201)
    assert balances == [6_000 + 7_000 * i for i in range(142)]
    # A debit alone is its own ledger transaction; combined ones share their batch's (one
    # wallet leg for the batch), each with its usage record.
    applied = [r.json() for r in responses if r.status_code == 201]
    async with session_maker() as session:
        records: dict[str, str] = dict(
            (
                await session.execute(
                    text(
                        "SELECT request_id, transaction_id FROM usage_records"
                        " WHERE user_id = 'alice'"
                    )
                )
            ).all()
        )
    assert {r["request_id"]: r["transaction_id"] for r in applied} == records
    assert len({r["transaction_id"] for r in applied}) < 142
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 6_000


async def test_combined_debits_draw_the_lots_in_order_and_book_them_exactly(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Maker
) -> None:
    now = utcnow()
    grant = await add_lot(session_maker, "bo", 300_000, expires_at=now + timedelta(days=5))
    paid = await add_lot(
        session_maker, "bo", 500_000, source=LotSource.PURCHASE, expires_at=now + timedelta(30)
    )
    await add_lot(session_maker, "bo", 200_000, source=LotSource.ADJUSTMENT)  # never expires
    await gateway_balance(client, gateway_headers, "bo")
    before = combined()
    responses = await together(
        [lambda: debit(client, gateway_headers, "bo", 10_000) for _ in range(120)]
    )
    assert combined() - before > 0, "no debit was combined"
    assert Counter(r.status_code for r in responses) == {201: 100, 402: 20}
    assert await remaining(session_maker, grant.id, paid.id) == [0, 0]
    assert await booked(session_maker, "promo_usage") == 300_000
    assert await booked(session_maker, "usage") == 700_000
    assert await wallet(session_maker, "bo") == (0, 0)


async def test_repeats_of_one_request_id_combined_debit_once(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "cy", 1_000_000)
    await gateway_balance(client, gateway_headers, "cy")
    responses = await together(
        [
            lambda: debit(client, gateway_headers, "cy", 7_000, request_id="req-1", model="m")
            for _ in range(40)
        ]
        + [
            # The same id with another body: a conflict, never a second debit.
            lambda: debit(client, gateway_headers, "cy", 9_000, request_id="req-1", model="m")
            for _ in range(10)
        ],
        workers=50,
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses[201] == 1
    assert statuses[201] + statuses[200] + statuses[409] == 50
    (applied,) = (r.json() for r in responses if r.status_code == 201)
    assert {r.json()["transaction_id"] for r in responses if r.status_code == 200} <= {
        applied["transaction_id"]
    }
    # Whichever body came first was applied, once; the other body's requests conflicted.
    spent = 1_000_000 - applied["balance_micros"]
    assert spent in (7_000, 9_000)
    assert statuses[409] == (10 if spent == 7_000 else 40)
    assert (await gateway_balance(client, gateway_headers, "cy"))["balance_micros"] == (
        1_000_000 - spent
    )


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "database_pool_size": RACE_POOL_SIZE,
            "service_token_cache_seconds": 60,
            "gateway_combine_debits": True,
            "gateway_debits_in_flight": 2,
        }
    ],
)
async def test_debits_of_many_wallets_past_the_bound_go_as_batches_and_are_exact(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    users = [f"many-{i}" for i in range(30)]
    for i, user in enumerate(users):
        # Every third wallet can pay for 4 of its 10 debits, the others for all of them.
        await deposit(client, admin_headers, user, 28_000 if i % 3 == 0 else 100_000)
    await gateway_balance(client, gateway_headers, users[0])
    before = combined()
    jobs = [
        (lambda user=user: debit(client, gateway_headers, user, 7_000, model="m"))
        for _ in range(10)
        for user in users
    ]
    responses = await together(jobs, workers=60)
    assert combined() - before > 0, "no debit was combined"
    assert Counter(r.status_code for r in responses) == {201: 10 * 20 + 4 * 10, 402: 6 * 10}
    for i, user in enumerate(users):
        expected = 0 if i % 3 == 0 else 100_000 - 70_000
        assert (await gateway_balance(client, gateway_headers, user))["balance_micros"] == expected
    async with session_maker() as session:
        shared = (
            await session.execute(
                text(
                    "SELECT count(*) FROM (SELECT transaction_id FROM usage_records"
                    " WHERE user_id LIKE 'many-%' GROUP BY transaction_id"
                    " HAVING count(DISTINCT user_id) > 1) t"
                )
            )
        ).scalar_one()
        assert shared > 0, "no batch carried debits of several wallets"
        assert await verify_ledger(session) == []


# The coordination alone, with the store's two calls as plain functions.


def _debit(user: str, request_id: str) -> UsageDebit:
    return UsageDebit(user, request_id, 1, "h", None)


class _Store:
    """Records what went alone and in batches; the first debit is held until released."""

    def __init__(self) -> None:
        self.alone: list[str] = []
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_batches = False

    async def debit_alone(self, debit: UsageDebit) -> Debited:
        self.alone.append(debit.request_id)
        await self.release.wait()
        if debit.request_id.startswith("poor"):
            raise insufficient_balance(0, 1)
        return Debited(f"txn-{debit.request_id}", "h", False, None)

    async def debit_batch(self, debits: Sequence[UsageDebit]) -> list[BatchOutcome]:
        self.batches.append([d.request_id for d in debits])
        if self.fail_batches:
            raise ConnectionError("the database went away")
        return [
            Debited(f"txn-{d.request_id}", "h", False, None)
            if not d.request_id.startswith("poor")
            else insufficient_balance(0, 1)
            for d in debits
        ]


async def test_what_waits_goes_as_one_batch_in_arrival_order_per_wallet() -> None:
    store = _Store()
    combiner = Combiner(store.debit_alone, store.debit_batch, min_batch=3)
    first = asyncio.ensure_future(combiner.debit(_debit("u", "a")))
    other_wallet = asyncio.ensure_future(combiner.debit(_debit("v", "x")))
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(combiner.debit(_debit("u", r))) for r in ("b", "c", "poor")]
    await asyncio.sleep(0)
    assert store.alone == ["a", "x"]
    assert store.batches == []
    store.release.set()
    assert (await first).transaction_id == "txn-a"
    assert (await other_wallet).transaction_id == "txn-x"
    assert [(await w).transaction_id for w in waiting[:2]] == ["txn-b", "txn-c"]
    with pytest.raises(InsufficientBalance):
        await waiting[2]
    assert store.batches == [["b", "c", "poor"]]
    assert combiner.in_flight == 0


async def test_fewer_than_min_combined_waiting_go_as_single_debits_in_arrival_order() -> None:
    assert MIN_COMBINED > 2
    store = _Store()
    combiner = Combiner(store.debit_alone, store.debit_batch)
    first = asyncio.ensure_future(combiner.debit(_debit("u", "a")))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(combiner.debit(_debit("u", "b")))
    third = asyncio.ensure_future(combiner.debit(_debit("u", "c")))
    poor_first = asyncio.ensure_future(combiner.debit(_debit("v", "x")))
    await asyncio.sleep(0)
    poor = asyncio.ensure_future(combiner.debit(_debit("v", "poor")))
    await asyncio.sleep(0)
    assert store.alone == ["a", "x"]
    store.release.set()
    assert (await first).transaction_id == "txn-a"
    assert (await second).transaction_id == "txn-b"
    assert (await third).transaction_id == "txn-c"
    await poor_first
    with pytest.raises(InsufficientBalance):
        await poor
    assert sorted(store.alone) == ["a", "b", "c", "poor", "x"]
    assert store.alone.index("b") < store.alone.index("c")
    assert store.batches == []
    assert combiner.in_flight == 0


async def test_an_outage_in_a_combined_batch_reaches_every_waiting_debit() -> None:
    store = _Store()
    store.fail_batches = True
    combiner = Combiner(store.debit_alone, store.debit_batch, min_batch=2)
    first = asyncio.ensure_future(combiner.debit(_debit("u", "a")))
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(combiner.debit(_debit("u", r))) for r in ("b", "c")]
    await asyncio.sleep(0)
    store.release.set()
    await first
    for future in waiting:
        with pytest.raises(ConnectionError):
            await future
    assert combiner.in_flight == 0
    # The wallet is free again: the next debit goes alone.
    assert (await combiner.debit(_debit("u", "d"))).transaction_id == "txn-d"


async def test_a_cancelled_waiting_request_neither_blocks_nor_drops_the_others() -> None:
    store = _Store()
    combiner = Combiner(store.debit_alone, store.debit_batch, min_batch=2)
    first = asyncio.ensure_future(combiner.debit(_debit("u", "a")))
    await asyncio.sleep(0)
    gone = asyncio.ensure_future(combiner.debit(_debit("u", "b")))
    kept = asyncio.ensure_future(combiner.debit(_debit("u", "c")))
    await asyncio.sleep(0)
    gone.cancel()
    store.release.set()
    await first
    assert (await kept).transaction_id == "txn-c"
    # The cancelled request's debit was queued: it went with the batch, as a started one would.
    assert store.batches == [["b", "c"]]
    assert combiner.in_flight == 0


async def test_off_every_debit_goes_alone() -> None:
    store = _Store()
    store.release.set()
    combiner = Combiner(store.debit_alone, store.debit_batch, combine=False)
    await asyncio.gather(*(combiner.debit(_debit("u", r)) for r in "abc"))
    assert store.alone == ["a", "b", "c"]
    assert store.batches == []


async def test_past_the_bound_debits_of_any_wallets_wait_and_go_as_one_batch() -> None:
    store = _Store()
    combiner = Combiner(store.debit_alone, store.debit_batch, min_batch=3, bound=1)
    first = asyncio.ensure_future(combiner.debit(_debit("u", "a")))
    await asyncio.sleep(0)
    queued = [
        asyncio.ensure_future(combiner.debit(_debit(user, request_id)))
        for user, request_id in (("w", "c"), ("v", "b"), ("w", "poor"), ("v", "d"))
    ]
    await asyncio.sleep(0)
    assert store.alone == ["a"]
    assert combiner.statements_in_flight == 1
    store.release.set()
    assert (await first).transaction_id == "txn-a"
    assert (await queued[0]).transaction_id == "txn-c"
    assert (await queued[1]).transaction_id == "txn-b"
    with pytest.raises(InsufficientBalance):
        await queued[2]
    assert (await queued[3]).transaction_id == "txn-d"
    # One batch, sorted by wallet, each wallet's debits in the order they arrived.
    assert store.batches == [["b", "d", "c", "poor"]]
    assert combiner.statements_in_flight == 0
    assert combiner.in_flight == 0


async def test_past_the_bound_fewer_than_min_combined_go_alone_in_arrival_order() -> None:
    store = _Store()
    combiner = Combiner(store.debit_alone, store.debit_batch, min_batch=3, bound=2)
    running = [asyncio.ensure_future(combiner.debit(_debit(u, r))) for u, r in ("ua", "vb")]
    await asyncio.sleep(0)
    queued = [asyncio.ensure_future(combiner.debit(_debit(u, r))) for u, r in ("wc", "xd")]
    await asyncio.sleep(0)
    assert store.alone == ["a", "b"]
    store.release.set()
    await asyncio.gather(*running)
    assert [(await q).transaction_id for q in queued] == ["txn-c", "txn-d"]
    assert store.alone == ["a", "b", "c", "d"]
    assert store.batches == []
    assert combiner.statements_in_flight == 0


async def test_below_the_bound_nothing_waits() -> None:
    store = _Store()
    store.release.set()
    combiner = Combiner(store.debit_alone, store.debit_batch, min_batch=2, bound=3)
    await asyncio.gather(*(combiner.debit(_debit(u, r)) for u, r in ("ua", "vb", "wc")))
    assert store.alone == ["a", "b", "c"]
    assert store.batches == []


def _reserves(
    reserved: list[list[str]],
) -> tuple[
    Callable[[str], Awaitable[str]], Callable[[Sequence[str]], Awaitable[list[str | Exception]]]
]:
    """A holds lane's two operations: alone, and batched (each batch recorded in `reserved`)."""

    async def reserve_alone(hold_id: str) -> str:
        return f"alone-{hold_id}"

    async def reserve_batch(hold_ids: Sequence[str]) -> list[str | Exception]:
        reserved.append(list(hold_ids))
        return [f"batched-{h}" for h in hold_ids]

    return reserve_alone, reserve_batch


async def test_lanes_share_one_bound_and_each_sends_its_own_batch_in_arrival_order() -> None:
    """A debit in flight fills a bound of one for the holds' lane too: reserves that arrive
    wait, and go as one batch of their own (in arrival order: no per-wallet sorting)."""
    store = _Store()
    slots = Slots(1)
    combiner = Combiner(store.debit_alone, store.debit_batch, min_batch=3, slots=slots)
    reserved: list[list[str]] = []
    reserve_alone, reserve_batch = _reserves(reserved)
    reserves: Lane[str, str] = Lane(reserve_alone, reserve_batch, slots, min_batch=3)
    first = asyncio.ensure_future(combiner.debit(_debit("u", "a")))
    await asyncio.sleep(0)
    queued = [asyncio.ensure_future(reserves.submit(h)) for h in ("z", "y", "x")]
    await asyncio.sleep(0)
    assert reserved == []
    assert reserves.statements_in_flight == 1
    store.release.set()
    await first
    assert [await q for q in queued] == ["batched-z", "batched-y", "batched-x"]
    assert reserved == [["z", "y", "x"]]
    assert slots.busy == 0


async def test_a_lane_with_a_bound_of_its_own_waits_from_it_while_the_others_do_not() -> None:
    """The holds' lanes wait from a bound of their own (1 statement in flight here), below the
    shared one (2): one debit in flight makes reserves wait, and go as one batch once it is
    done."""
    store = _Store()
    slots = Slots(2)
    combiner = Combiner(store.debit_alone, store.debit_batch, min_batch=3, slots=slots)
    reserved: list[list[str]] = []
    reserve_alone, reserve_batch = _reserves(reserved)
    reserves: Lane[str, str] = Lane(reserve_alone, reserve_batch, slots, min_batch=2, bound=1)
    first = asyncio.ensure_future(combiner.debit(_debit("u", "a")))
    await asyncio.sleep(0)
    queued = [asyncio.ensure_future(reserves.submit(h)) for h in ("z", "y")]
    await asyncio.sleep(0)
    assert reserved == []
    assert len(reserves.queued) == 2
    store.release.set()
    assert [await q for q in queued] == ["batched-z", "batched-y"]
    await first
    assert reserved == [["z", "y"]]
    assert store.alone == ["a"]
    assert slots.busy == 0
