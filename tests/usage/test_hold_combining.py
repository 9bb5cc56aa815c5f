"""Reserves and captures past the bound of statements in flight (`app/usage/combining.py`, on by
default) go together as one statement per operation, with exactly the outcomes of applying them
one by one in arrival order: every status, balance, held amount, spend-limit counter and ledger
entry as if each had gone alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import CaptureExceedsHold, IdempotencyConflict, InsufficientBalance, NotFound
from app.ledger.holds import HoldResult
from app.ledger.holds_repository import HoldCapture, HoldRequest
from app.ledger.verify import verify_ledger
from app.usage.repository import UsageStore
from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.concurrency import together
from testing.helpers.ledger import deposit, gateway_balance
from testing.helpers.limits import set_limit

Maker = async_sessionmaker[AsyncSession]

pytestmark = pytest.mark.parametrize(
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


def combined(operation: str) -> float:
    return (
        REGISTRY.get_sample_value("billing_gateway_holds_combined_total", {"operation": operation})
        or 0.0
    )


async def _reserve(
    client: httpx.AsyncClient, headers: dict[str, str], user: str, hold_id: str, amount: int
) -> httpx.Response:
    body = {"user_id": user, "hold_id": hold_id, "amount_micros": amount, "api_key_id": "k1"}
    return await client.post("/v1/internal/holds", json=body, headers=headers)


async def _capture(
    client: httpx.AsyncClient, headers: dict[str, str], hold_id: str, amount: int
) -> httpx.Response:
    body = {"amount_micros": amount, "model": "m", "input_tokens": 10, "output_tokens": 2}
    return await client.post(f"/v1/internal/holds/{hold_id}/capture", json=body, headers=headers)


async def test_reserves_and_captures_of_many_wallets_past_the_bound_are_batched_and_exact(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Callable[..., dict[str, str]],
    session_maker: Maker,
) -> None:
    users = [f"holder-{i}" for i in range(12)]
    for i, user in enumerate(users):
        # Every fourth wallet can hold 3 of its 8 reserves, the others all of them.
        await deposit(client, admin_headers, user, 35_000 if i % 4 == 0 else 100_000)
    # holder-1's key may hold (and then spend) 80_000 a day: all of its reserves fit, each
    # answering what is left after it.
    await set_limit(client, user_headers("holder-1"), "0.08", "day", key="k1")
    await gateway_balance(client, gateway_headers, users[0])  # the token lookup is cached now
    reserves_before, captures_before = combined("reserve"), combined("capture")

    reserves = [
        (lambda user=user, n=n: _reserve(client, gateway_headers, user, f"{user}-h{n}", 10_000))
        for n in range(8)
        for user in users
    ]
    answered = await together(reserves, workers=48)
    assert combined("reserve") - reserves_before > 0, "no reserve went in a batch"
    assert Counter(r.status_code for r in answered) == {201: 3 * 3 + 8 * 9, 402: 5 * 3}
    held = [r.json() for r in answered if r.status_code == 201]
    for i, user in enumerate(users):
        mine = sorted(h["held_micros"] for h in held if h["user_id"] == user)
        # Each reserve answers its wallet right after it: each a different held amount.
        count = 3 if i % 4 == 0 else 8
        assert mine == [10_000 * (n + 1) for n in range(count)], user
        wallet = await gateway_balance(client, gateway_headers, user)
        assert wallet["held_micros"] == 10_000 * count
    limited = sorted(h["limit_remaining_micros"] for h in held if h["user_id"] == "holder-1")
    assert limited == [10_000 * n for n in range(8)]
    refused = [r.json() for r in answered if r.status_code == 402]
    assert {p["available_micros"] for p in refused} == {5_000}

    # A replay of one of them (same body) rides along with the captures' wave.
    hold_ids = [h["hold_id"] for h in held]
    captures = [
        (lambda hold_id=hold_id: _capture(client, gateway_headers, hold_id, 7_000))
        for hold_id in hold_ids
    ]
    captured = await together(captures, workers=48)
    assert combined("capture") - captures_before > 0, "no capture went in a batch"
    assert Counter(r.status_code for r in captured) == {200: len(hold_ids)}
    done = [r.json() for r in captured]
    assert {d["status"] for d in done} == {"captured"}
    for i, user in enumerate(users):
        count = 3 if i % 4 == 0 else 8
        funded = 35_000 if i % 4 == 0 else 100_000
        mine = sorted((d["balance_micros"], d["held_micros"]) for d in done if d["user_id"] == user)
        # Each capture answers its wallet right after it, as if it had gone alone in turn.
        assert mine == sorted(
            (funded - 7_000 * (n + 1), 10_000 * (count - n - 1)) for n in range(count)
        )
        wallet = await gateway_balance(client, gateway_headers, user)
        assert (wallet["balance_micros"], wallet["held_micros"]) == (funded - 7_000 * count, 0)
    # Each capture gives back 3_000 of its reservation to the key's limit, in turn.
    limited = sorted(d["limit_remaining_micros"] for d in done if d["user_id"] == "holder-1")
    assert limited == [3_000 * (n + 1) for n in range(8)]

    # A wallet's transaction list shows each capture, batched or not, as its own line.
    listing = await client.get(
        "/v1/balance/transactions",
        params={"kind": "hold_capture"},
        headers=user_headers("holder-2"),
    )
    lines = listing.json()["data"]
    assert [(x["kind"], x["amount"], x["model"]) for x in lines] == [
        ("hold_capture", "-0.007000", "m")
    ] * 8
    after = [f"{(100_000 - 7_000 * n) / 1e6:.6f}" for n in range(8, 0, -1)]
    assert [x["balance_after"] for x in lines] == after

    again = await _capture(client, gateway_headers, hold_ids[0], 7_000)
    assert again.status_code == 200
    assert again.json()["replayed"] is True
    async with session_maker() as session:
        records = (
            await session.execute(
                text(
                    "SELECT r.request_id, coalesce(r.reference, t.reference), t.id"
                    " FROM usage_records r JOIN ledger_transactions t ON t.id = r.transaction_id"
                    " WHERE t.kind = 'hold_capture' AND r.user_id LIKE 'holder-%'"
                )
            )
        ).all()
        # Each capture posted once: one usage record per hold, keyed by its hold id (its own
        # transaction's reference when it went alone, its record's in a batch's transaction).
        assert sorted(r[0] for r in records) == sorted(hold_ids)
        assert all(key == f"hold:{hold_id}" for hold_id, key, _ in records)
        # The captures applied together share one transaction (a wallet leg per user).
        assert len({r[2] for r in records}) < len(hold_ids)
        spent = (
            await session.execute(
                text(
                    "SELECT spent_micros FROM spend_limits"
                    " WHERE user_id = 'holder-1' AND scope = 'key:k1'"
                )
            )
        ).scalar_one()
        assert spent == 8 * 7_000
        assert await verify_ledger(session) == []


def _request(user: str, hold_id: str, amount: int, request_hash: str = "h") -> HoldRequest:
    return HoldRequest(user, hold_id, amount, 600, request_hash)


async def test_a_batch_applies_the_wallets_it_can_decide_and_the_rest_go_alone_in_order(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    """One batch of each operation, called as the lane calls it, mixing every outcome: the
    wallets decided whole are applied by the statement, the others one by one afterwards, in
    arrival order, and each answer is the one it would have had alone."""
    for user in ("ann", "bob", "cat", "dan"):
        await deposit(client, admin_headers, user, 100_000)
    store: UsageStore = app.state.usage_store
    assert isinstance(await store.reserve(_request("bob", "bob-old", 10_000)), HoldResult)
    reserves_before, captures_before = combined("reserve"), combined("capture")
    outcomes = await store.reserve_batch(
        [
            _request("ann", "ann-1", 30_000),
            _request("bob", "bob-1", 10_000),
            _request("cat", "cat-1", 60_000),
            _request("ann", "ann-2", 30_000),
            _request("bob", "bob-old", 10_000),  # a replay: bob's reserves go alone
            _request("cat", "cat-2", 60_000),  # past cat's balance: cat's go alone
            _request("dan", "twice", 10_000),
            _request("ann", "ann-3", 30_000),
            _request("eve", "twice", 10_000, "other"),  # repeated: dan's and eve's go alone
        ]
    )
    assert combined("reserve") - reserves_before == 3  # ann's three
    held = [
        (o.wallet.held_micros, o.replayed) if isinstance(o, HoldResult) else type(o)
        for o in outcomes
    ]
    assert held == [
        (30_000, False),
        (20_000, False),
        (60_000, False),
        (60_000, False),
        (20_000, True),
        InsufficientBalance,
        (10_000, False),
        (90_000, False),
        IdempotencyConflict,  # eve's reserve of the hold id dan has by then
    ]

    details = {"model": "m", "input_tokens": 1, "output_tokens": 1}
    captured = await store.capture_batch(
        [
            HoldCapture("ann-1", 25_000, "c", details, 2.0),
            HoldCapture("bob-1", 70_000, "c", details, 2.0),  # past 2x: bob's go alone
            HoldCapture("ann-2", 0, "c", details, 2.0),
            HoldCapture("bob-old", 5_000, "c", details, 2.0),
            HoldCapture("nope", 1, "c", details, 2.0),  # no such hold: alone, 404
            HoldCapture("cat-1", 60_000, "c", details, 2.0),
            HoldCapture("cat-1", 60_000, "c", details, 2.0),  # repeated: cat's go alone
            HoldCapture("ann-3", 31_000, "c", details, 2.0),
        ]
    )
    assert combined("capture") - captures_before == 3  # ann's three
    wallets = [
        (o.wallet.balance_micros, o.wallet.held_micros, o.replayed)
        if isinstance(o, HoldResult)
        else type(o)
        for o in captured
    ]
    assert wallets == [
        (75_000, 60_000, False),
        CaptureExceedsHold,
        (75_000, 30_000, False),
        (95_000, 10_000, False),
        NotFound,
        (40_000, 0, False),
        (40_000, 0, True),
        (44_000, 0, False),
    ]
    async with session_maker() as session:
        assert await verify_ledger(session) == []
