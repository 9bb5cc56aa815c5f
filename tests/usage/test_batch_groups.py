"""Batch requests grouped in the process (`app.usage.combining.BatchGroups`, with
`gateway_combine_debits`): the requests that arrive while a batch statement is in flight go
together as one batch, one request after the other in arrival order, each answered with its own
events' outcomes, exactly as if the requests had gone one after another."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.ledger.verify import verify_ledger
from app.usage.combining import BatchGroups
from app.usage.repository import UsageStore
from app.usage.store import BatchOutcome, Debited, UsageDebit
from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.concurrency import together
from testing.helpers.ledger import deposit, gateway_balance

Maker = async_sessionmaker[AsyncSession]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "database_pool_size": RACE_POOL_SIZE,
        "service_token_cache_seconds": 60,
        "gateway_combine_debits": True,
    }


async def _send(
    client: httpx.AsyncClient, headers: dict[str, str], events: list[dict[str, Any]]
) -> httpx.Response:
    return await client.post("/v1/internal/usage/batch", json={"events": events}, headers=headers)


async def test_concurrent_batches_over_the_same_wallets_are_grouped_and_exact(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    users = [f"grp-{i}" for i in range(20)]
    for i, user in enumerate(users):
        # Every fourth wallet can pay for 5 of its 12 events, the others for all of them.
        await deposit(client, admin_headers, user, 35_000 if i % 4 == 0 else 100_000)
    await gateway_balance(client, gateway_headers, users[0])  # the token lookup is cached now
    requests = [
        [
            {"user_id": user, "request_id": f"grp-{r}-{user}", "amount_micros": 7_000, "model": "m"}
            for user in users
        ]
        for r in range(12)
    ]
    responses = await together(
        [partial(_send, client, gateway_headers, events) for events in requests],
        workers=12,
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    bodies = [r.json() for r in responses]
    # Each answers its own events, in the order it sent them.
    for events, body in zip(requests, bodies, strict=True):
        assert [r["request_id"] for r in body["results"]] == [e["request_id"] for e in events]
    statuses = Counter(r["status"] for body in bodies for r in body["results"])
    assert statuses == {"applied": 15 * 12 + 5 * 5, "insufficient_balance": 5 * 7}
    # A wallet's events are decided in request order, as if the requests went one by one: its
    # balances after each applied event go down by 7,000 a request at a time.
    for i, user in enumerate(users):
        after = [
            r["balance_micros"]
            for body in bodies
            for r in body["results"]
            if r["request_id"].endswith(f"-{user}") and r["status"] == "applied"
        ]
        start = 35_000 if i % 4 == 0 else 100_000
        assert sorted(after, reverse=True) == [start - 7_000 * (n + 1) for n in range(len(after))]
        balance = (await gateway_balance(client, gateway_headers, user))["balance_micros"]
        assert balance == (0 if i % 4 == 0 else 100_000 - 12 * 7_000)
    async with session_maker() as session:
        shared = (
            await session.execute(
                text(
                    "SELECT count(*) FROM (SELECT transaction_id FROM usage_records"
                    " WHERE request_id LIKE 'grp-%' GROUP BY transaction_id"
                    " HAVING count(DISTINCT split_part(request_id, '-', 2)) > 1) t"
                )
            )
        ).scalar_one()
        assert shared > 0, "no ledger transaction carried the events of several requests"
        assert await verify_ledger(session) == []


async def test_a_request_id_repeated_across_grouped_batches_applies_once(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "rep-a", 1_000_000)
    await deposit(client, admin_headers, "rep-b", 1_000_000)
    await gateway_balance(client, gateway_headers, "rep-a")
    same = {"user_id": "rep-a", "request_id": "rep-1", "amount_micros": 7_000}
    other_body = {"user_id": "rep-b", "request_id": "rep-1", "amount_micros": 7_000}
    requests = [
        [same, {"user_id": "rep-b", "request_id": f"rep-b-{r}", "amount_micros": 1_000}]
        for r in range(8)
    ] + [[other_body] for _ in range(4)]
    responses = await together(
        [partial(_send, client, gateway_headers, events) for events in requests],
        workers=12,
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    firsts = [r.json()["results"][0] for r in responses]
    applied = [(r, events[0]) for r, events in zip(firsts, requests, strict=True)]
    (original, body) = next((r, e) for r, e in applied if r["status"] == "applied")
    # Whichever body came first was applied, once; the same body replays it, the other conflicts.
    for r, event in applied:
        if r is original:
            continue
        if event is body:
            assert (r["status"], r["transaction_id"]) == ("replayed", original["transaction_id"])
        else:
            assert r["status"] == "conflict"
    left_a = (await gateway_balance(client, gateway_headers, "rep-a"))["balance_micros"]
    left_b = (await gateway_balance(client, gateway_headers, "rep-b"))["balance_micros"]
    assert 2_000_000 - left_a - left_b == 7_000 + 8 * 1_000


async def test_two_groups_in_flight_over_the_same_wallets_are_exact(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    """A second group in flight (here from any size on) over the wallets the first holds waits
    for its locks and applies every event once, each wallet's events one by one: refusals where
    the balance runs out, a request id sent twice applied once."""
    users = [f"two-{i:02d}" for i in range(20)]
    for i, user in enumerate(users):
        await deposit(client, admin_headers, user, 35_000 if i % 4 == 0 else 100_000)
    store = await UsageStore.open(app.state.settings.database_url.get_secret_value(), max_size=4)
    flying = most = 0

    async def batch(debits: Sequence[UsageDebit]) -> list[BatchOutcome]:
        nonlocal flying, most
        flying += 1
        most = max(most, flying)
        try:
            return await store.debit_batch(debits)
        finally:
            flying -= 1

    groups = BatchGroups(batch, min_second=1)
    requests = [
        [UsageDebit(user, f"two-{r}-{user}", 7_000, f"h-{r}-{user}", None) for user in users]
        for r in range(12)
    ]
    requests.append([UsageDebit(users[1], "two-0-two-01", 7_000, "h-0-two-01", None)])
    try:
        sent = []
        for debits in requests:  # one after the other, each while the ones before are on their way
            sent.append(asyncio.ensure_future(groups.submit(debits)))
            await _settle()
        answers = await asyncio.gather(*sent)
    finally:
        await store.close()
    assert most == 2, "never two groups in flight"
    outcomes = [o for answer in answers[:-1] for o in answer]
    assert sum(isinstance(o, Debited) for o in outcomes) == 15 * 12 + 5 * 5
    (again,) = answers[-1]
    assert isinstance(again, Debited)
    assert again.replayed
    for i, user in enumerate(users):
        after = sorted(
            (
                o.wallet.balance_micros
                for answer in answers[:-1]
                for d, o in zip(users, answer, strict=True)
                if d == user and isinstance(o, Debited) and o.wallet is not None
            ),
            reverse=True,
        )
        start = 35_000 if i % 4 == 0 else 100_000
        assert after == [start - 7_000 * (n + 1) for n in range(len(after))]
        balance = (await gateway_balance(client, gateway_headers, user))["balance_micros"]
        assert balance == (0 if i % 4 == 0 else 100_000 - 12 * 7_000)
    async with session_maker() as session:
        assert await verify_ledger(session) == []


# The coordination alone, with the store's batch as a plain function.


def _debit(request_id: str) -> UsageDebit:
    return UsageDebit("u", request_id, 1, "h", None)


class _Store:
    """Records the batches sent; each batch is held until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail = False

    async def debit_batch(self, debits: Sequence[UsageDebit]) -> list[BatchOutcome]:
        self.batches.append([d.request_id for d in debits])
        await self.release.wait()
        if self.fail:
            raise ConnectionError("the database went away")
        return [Debited(f"txn-{d.request_id}", "h", False, None) for d in debits]


async def _settle() -> None:
    """Let the submitted requests and the sender's task run up to where they wait."""
    for _ in range(5):
        await asyncio.sleep(0)


def _ids(outcomes: list[BatchOutcome]) -> list[str]:
    return [o.transaction_id for o in outcomes if isinstance(o, Debited)]


async def test_requests_arriving_while_one_is_in_flight_go_as_one_batch_in_arrival_order() -> None:
    store = _Store()
    groups = BatchGroups(store.debit_batch)
    first = asyncio.ensure_future(groups.submit([_debit("a1"), _debit("a2")]))
    await _settle()
    assert store.batches == [["a1", "a2"]]
    second = asyncio.ensure_future(groups.submit([_debit("b1")]))
    third = asyncio.ensure_future(groups.submit([_debit("c1"), _debit("c2")]))
    await _settle()
    assert len(store.batches) == 1  # they wait for the one in flight
    store.release.set()
    assert _ids(await first) == ["txn-a1", "txn-a2"]
    assert _ids(await second) == ["txn-b1"]
    assert _ids(await third) == ["txn-c1", "txn-c2"]
    assert store.batches == [["a1", "a2"], ["b1", "c1", "c2"]]


async def test_a_group_holds_at_most_max_events_and_never_splits_a_request() -> None:
    store = _Store()
    groups = BatchGroups(store.debit_batch, max_events=3)
    first = asyncio.ensure_future(groups.submit([_debit("a")]))
    await _settle()
    rest = [
        asyncio.ensure_future(groups.submit([_debit(f"{r}{i}") for i in range(n)]))
        for r, n in (("b", 2), ("c", 2), ("d", 5), ("e", 1))
    ]
    await _settle()
    store.release.set()
    await first
    assert [len(await r) for r in rest] == [2, 2, 5, 1]
    assert store.batches == [
        ["a"],
        ["b0", "b1"],
        ["c0", "c1"],
        ["d0", "d1", "d2", "d3", "d4"],
        ["e0"],
    ]


async def test_a_failed_group_fails_each_of_its_requests_and_the_next_still_goes() -> None:
    store = _Store()
    groups = BatchGroups(store.debit_batch)
    store.fail = True
    first = asyncio.ensure_future(groups.submit([_debit("a")]))
    await _settle()
    waiting = [asyncio.ensure_future(groups.submit([_debit(r)])) for r in ("b", "c")]
    await _settle()
    store.release.set()
    for future in (first, *waiting):
        with pytest.raises(ConnectionError):
            await future
    store.fail = False
    assert _ids(await groups.submit([_debit("d")])) == ["txn-d"]


async def test_a_cancelled_request_leaves_its_debits_in_the_group() -> None:
    store = _Store()
    groups = BatchGroups(store.debit_batch)
    first = asyncio.ensure_future(groups.submit([_debit("a")]))
    await _settle()
    gone = asyncio.ensure_future(groups.submit([_debit("b")]))
    kept = asyncio.ensure_future(groups.submit([_debit("c")]))
    await _settle()
    gone.cancel()
    store.release.set()
    await first
    assert _ids(await kept) == ["txn-c"]
    assert gone.cancelled()
    assert store.batches == [["a"], ["b", "c"]]


async def test_not_combining_each_request_goes_alone() -> None:
    store = _Store()
    store.release.set()
    groups = BatchGroups(store.debit_batch, combine=False)
    results = await asyncio.gather(*(groups.submit([_debit(r)]) for r in ("a", "b", "c")))
    assert [_ids(r) for r in results] == [["txn-a"], ["txn-b"], ["txn-c"]]
    assert store.batches == [["a"], ["b"], ["c"]]


async def test_a_second_group_goes_in_flight_once_it_is_as_large_as_the_first() -> None:
    store = _Store()
    groups = BatchGroups(store.debit_batch, min_second=2)
    first = asyncio.ensure_future(groups.submit([_debit("a1"), _debit("a2")]))
    await _settle()
    second = asyncio.ensure_future(groups.submit([_debit("b1")]))
    await _settle()
    assert store.batches == [["a1", "a2"]]  # fewer events than the group in flight
    third = asyncio.ensure_future(groups.submit([_debit("c1")]))
    await _settle()
    assert store.batches == [["a1", "a2"], ["b1", "c1"]]  # as many: the second in flight
    fourth = asyncio.ensure_future(groups.submit([_debit(f"d{i}") for i in range(5)]))
    await _settle()
    assert len(store.batches) == 2  # two in flight at most
    store.release.set()
    assert [_ids(await f) for f in (first, second, third)] == [
        ["txn-a1", "txn-a2"],
        ["txn-b1"],
        ["txn-c1"],
    ]
    assert len(await fourth) == 5
    assert store.batches[2] == [f"d{i}" for i in range(5)]


async def test_a_second_group_waits_for_at_least_min_second_events() -> None:
    store = _Store()
    groups = BatchGroups(store.debit_batch, min_second=3)
    first = asyncio.ensure_future(groups.submit([_debit("a")]))
    await _settle()
    waiting = [asyncio.ensure_future(groups.submit([_debit(r)])) for r in ("b", "c")]
    await _settle()
    assert store.batches == [["a"]]
    waiting.append(asyncio.ensure_future(groups.submit([_debit("d")])))
    await _settle()
    assert store.batches == [["a"], ["b", "c", "d"]]
    store.release.set()
    await first
    assert [_ids(await w) for w in waiting] == [["txn-b"], ["txn-c"], ["txn-d"]]
