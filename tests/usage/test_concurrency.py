"""Real concurrency on PostgreSQL, through the HTTP API: 64 requests in flight at once over the
app's pooled connections (`RACE_POOL_SIZE`, all of them busy), released together by one event.
The app runs in-process (httpx's ASGI transport on this event loop), so each running request
holds its own pooled asyncpg connection and the races happen where they matter, in PostgreSQL's
row locks and unique indexes."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any

import httpx
import pytest

from app.jobs.holds import expire_holds
from app.models.base import utcnow
from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.concurrency import together
from testing.helpers.ledger import debit, deposit, gateway_balance


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Each debit its own statement: the debits of one wallet race on its row lock in
    # PostgreSQL, as they do across processes (tests/usage/test_combining.py: within one).
    return {
        "database_pool_size": RACE_POOL_SIZE,
        "service_token_cache_seconds": 60,
        "gateway_combine_debits": False,
    }


def connections_opened(app: Any) -> int:
    """How many connections the gateway's pool holds: it opens one only when every open one is
    busy, so this is the most requests that ever ran on the database at once (PostgreSQL store).
    """
    return int(app.state.usage_store.pool.get_size())


async def test_400_debits_64_at_a_time_take_exactly_what_the_wallet_holds(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    await gateway_balance(client, gateway_headers, "alice")  # the token lookup is cached now
    responses = await together(
        [lambda: debit(client, gateway_headers, "alice", 7_000) for _ in range(400)]
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 142, 402: 258}
    # The balance only falls, so every refusal saw the last 0.006000.
    assert {r.json()["available_micros"] for r in responses if r.status_code == 402} == {6_000}
    balances = sorted(r.json()["balance_micros"] for r in responses if r.status_code == 201)
    assert balances == [6_000 + 7_000 * i for i in range(142)]
    wallet = await gateway_balance(client, gateway_headers, "alice")
    assert wallet["balance_micros"] == 6_000
    portal = await client.get("/v1/balance", headers=admin_headers)
    assert portal.status_code == 200
    opened = connections_opened(app)
    assert opened == RACE_POOL_SIZE, f"only {opened} connections were ever in use at once"


async def test_50_identical_usage_requests_at_once_debit_once(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    responses = await together(
        [
            lambda: debit(client, gateway_headers, "alice", 7_000, request_id="req-1", model="m")
            for _ in range(50)
        ],
        workers=50,
    )
    assert Counter(r.status_code for r in responses) == {201: 1, 200: 49}
    assert sum(r.json()["replayed"] for r in responses) == 49
    assert len({r.json()["transaction_id"] for r in responses}) == 1
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 993_000


async def test_64_holds_racing_one_wallet_never_hold_more_than_the_balance(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    observed: list[dict[str, Any]] = []
    racing = True

    async def observe() -> None:
        while racing:
            observed.append(await gateway_balance(client, gateway_headers, "alice"))

    def reserve(i: int) -> Callable[[], Awaitable[httpx.Response]]:
        return lambda: client.post(
            "/v1/internal/holds",
            json={"user_id": "alice", "hold_id": f"h-{i}", "amount_micros": 30_000},
            headers=gateway_headers,
        )

    observer = asyncio.create_task(observe())
    responses = await together([reserve(i) for i in range(64)])
    racing = False
    await observer
    assert Counter(r.status_code for r in responses) == {201: 33, 402: 31}
    assert {r.json()["available_micros"] for r in responses if r.status_code == 402} == {10_000}
    wallet = await gateway_balance(client, gateway_headers, "alice")
    assert (wallet["balance_micros"], wallet["held_micros"]) == (1_000_000, 990_000)
    assert observed
    assert all(0 <= w["held_micros"] <= w["balance_micros"] for w in observed)


async def test_concurrent_captures_above_the_hold_charge_once_and_block_the_next_debit(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    hold = await client.post(
        "/v1/internal/holds",
        json={"user_id": "alice", "hold_id": "h-1", "amount_micros": 800_000},
        headers=gateway_headers,
    )
    assert hold.status_code == 201
    responses = await together(
        [
            lambda: client.post(
                "/v1/internal/holds/h-1/capture",
                json={"amount_micros": 1_250_000, "model": "m"},
                headers=gateway_headers,
            )
            for _ in range(20)
        ],
        workers=20,
    )
    assert Counter(r.status_code for r in responses) == {200: 20}
    assert sum(r.json()["replayed"] for r in responses) == 19
    wallet = await gateway_balance(client, gateway_headers, "alice")
    assert (wallet["balance_micros"], wallet["held_micros"]) == (-250_000, 0)
    refused = await debit(client, gateway_headers, "alice", 1)
    assert refused.status_code == 402
    assert refused.json()["available_micros"] == -250_000


async def test_two_expiry_jobs_at_once_release_each_expired_hold_once(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Any,
) -> None:
    users = [f"user-{i}" for i in range(8)]
    for user in users:
        await deposit(client, admin_headers, user, 1_000_000)
    for i in range(160):
        response = await client.post(
            "/v1/internal/holds",
            json={
                "user_id": users[i % 8],
                "hold_id": f"h-{i}",
                "amount_micros": 5_000,
                "ttl_seconds": 1,
            },
            headers=gateway_headers,
        )
        assert response.status_code == 201
    later = utcnow() + timedelta(seconds=5)
    counts = await together(
        [lambda: expire_holds(app.state.usage_store, now=later, batch_size=7) for _ in range(2)],
        workers=2,
    )
    assert sum(counts) == 160
    for user in users:
        wallet = await gateway_balance(client, gateway_headers, user)
        assert (wallet["balance_micros"], wallet["held_micros"]) == (1_000_000, 0)


async def test_captures_racing_the_expiry_job_resolve_each_hold_one_way(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Any,
) -> None:
    await deposit(client, admin_headers, "alice", 10_000_000)
    hold_ids = [uuid.uuid4().hex for _ in range(60)]
    for hold_id in hold_ids:
        response = await client.post(
            "/v1/internal/holds",
            json={"user_id": "alice", "hold_id": hold_id, "amount_micros": 10_000},
            headers=gateway_headers,
        )
        assert response.status_code == 201
    later = utcnow() + timedelta(hours=1)

    def capture(hold_id: str) -> Callable[[], Awaitable[Any]]:
        return lambda: client.post(
            f"/v1/internal/holds/{hold_id}/capture",
            json={"amount_micros": 7_000},
            headers=gateway_headers,
        )

    jobs: list[Callable[[], Awaitable[Any]]] = [capture(h) for h in hold_ids]
    jobs[30:30] = [lambda: expire_holds(app.state.usage_store, now=later, batch_size=5)] * 2
    results = await together(jobs)
    captures = [r for r in results if isinstance(r, httpx.Response)]
    expired = sum(r for r in results if isinstance(r, int))
    captured = sum(r.status_code == 200 for r in captures)
    assert all(r.status_code in (200, 409) for r in captures)
    assert captured + expired == 60
    wallet = await gateway_balance(client, gateway_headers, "alice")
    assert (wallet["balance_micros"], wallet["held_micros"]) == (10_000_000 - 7_000 * captured, 0)


async def test_overlapping_batches_at_once_apply_each_event_once_and_never_fail(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    """Eight batches sent together share wallets and request ids, each in its own order (the
    shape that deadlocks when two writers take rows in different orders): every batch answers
    200, every event is applied exactly once across them, and the rest are replays."""
    users = [f"user-{i:02d}" for i in range(20)]
    for user in users:
        await deposit(client, admin_headers, user, 10_000_000)
    pool: list[dict[str, Any]] = [
        {"user_id": users[i % len(users)], "request_id": f"req-{i}", "amount_micros": 1_000 + i}
        for i in range(400)
    ]
    rng = random.Random(7)
    batches = [rng.sample(pool, 250) for _ in range(8)]
    responses = await together(
        [
            partial(
                client.post,
                "/v1/internal/usage/batch",
                json={"events": events},
                headers=gateway_headers,
            )
            for events in batches
        ],
        workers=8,
    )
    assert [r.status_code for r in responses] == [200] * 8, [r.text[:200] for r in responses]
    bodies = [r.json() for r in responses]
    sent = {event["request_id"] for events in batches for event in events}
    assert sum(b["applied"] for b in bodies) == len(sent)
    assert sum(b["replayed"] for b in bodies) == sum(len(e) for e in batches) - len(sent)
    assert all(b["failed"] == 0 for b in bodies)
    spent = sum(event["amount_micros"] for event in pool if event["request_id"] in sent)
    remaining = 0
    for user in users:
        remaining += (await gateway_balance(client, gateway_headers, user))["balance_micros"]
    assert remaining == 10_000_000 * len(users) - spent
