"""Spending credit lots: every debit, batch event, reserve and capture draws in one order
(soonest expiry first, never last; granted before paid; oldest first), never from a lot at or
past its expiry, and books granted credit used to promo usage, paid credit to usage."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ledger.verify import verify_ledger
from app.models.base import utcnow
from app.models.ledger import LotSource
from app.usage.repository import UsageStore
from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.concurrency import together
from testing.helpers.ledger import debit, deposit
from testing.helpers.limits import Clock
from testing.helpers.lots import add_lot, booked, remaining, wallet

Maker = async_sessionmaker[AsyncSession]


async def _three_kinds(maker: Maker, user: str, now: datetime) -> list[str]:
    """Four tracked lots whose draw order differs from their creation order, in draw order,
    then (last) a never-expiring paid lot of 10_000 whose remainder is derived."""
    paid_10d = await add_lot(
        maker, user, 3_000, source=LotSource.PURCHASE, expires_at=now + timedelta(days=10)
    )
    granted_10d = await add_lot(maker, user, 2_000, expires_at=now + timedelta(days=10))
    granted_never = await add_lot(maker, user, 4_000)
    granted_5d = await add_lot(maker, user, 1_000, expires_at=now + timedelta(days=5))
    await add_lot(maker, user, 10_000, source=LotSource.ADJUSTMENT)
    return [granted_5d.id, granted_10d.id, paid_10d.id, granted_never.id]


async def test_a_debit_spanning_three_lots_draws_them_in_the_stated_order(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Maker
) -> None:
    order = await _three_kinds(session_maker, "ann", utcnow())
    response = await debit(client, gateway_headers, "ann", 4_500)
    assert response.status_code == 201, response.text
    # 5 days (granted) 1_000, then 10 days granted 2_000, then 10 days paid 1_500 of 3_000.
    assert await remaining(session_maker, *order) == [0, 0, 1_500, 4_000]
    assert await wallet(session_maker, "ann") == (20_000 - 4_500, 5_500)
    assert (await booked(session_maker, "promo_usage"), await booked(session_maker, "usage")) == (
        3_000,
        1_500,
    )
    response = await debit(client, gateway_headers, "ann", 6_000)
    assert response.status_code == 201, response.text
    # The paid 1_500, the never-expiring grant's 4_000, then 500 of the paid credit.
    assert await remaining(session_maker, *order) == [0, 0, 0, 0]
    assert await wallet(session_maker, "ann") == (9_500, 0)
    assert (await booked(session_maker, "promo_usage"), await booked(session_maker, "usage")) == (
        7_000,
        3_500,
    )


async def test_a_lot_one_microsecond_past_expiry_is_never_drawn_before_the_sweep(
    app: Any,
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    user_headers: Any,
    session_maker: Maker,
) -> None:
    now = utcnow()
    app.state.clock = Clock(now)
    gone = await add_lot(session_maker, "bea", 5_000, expires_at=now - timedelta(microseconds=1))
    at_expiry = await add_lot(session_maker, "bea", 7_000, expires_at=now)
    live = await add_lot(session_maker, "bea", 300, expires_at=now + timedelta(microseconds=1))
    await add_lot(session_maker, "bea", 1_000, source=LotSource.ADJUSTMENT)
    refused = await debit(client, gateway_headers, "bea", 1_301)
    assert refused.status_code == 402, refused.text
    assert refused.json()["available_micros"] == 1_300
    hold = await client.post(
        "/v1/internal/holds",
        json={"user_id": "bea", "hold_id": "h-bea", "amount_micros": 1_301},
        headers=gateway_headers,
    )
    assert hold.status_code == 402, hold.text
    batch = await client.post(
        "/v1/internal/usage/batch",
        json={"events": [{"user_id": "bea", "request_id": "b-1", "amount_micros": 1_301}]},
        headers=gateway_headers,
    )
    assert batch.status_code == 200, batch.text
    assert batch.json()["results"][0]["status"] == "insufficient_balance"
    portal = (await client.get("/v1/balance", headers=user_headers("bea"))).json()
    assert (portal["balance"], portal["available"]) == ("0.013300", "0.001300")
    assert (await debit(client, gateway_headers, "bea", 1_300)).status_code == 201
    assert await remaining(session_maker, gone.id, at_expiry.id, live.id) == [5_000, 7_000, 0]
    assert await wallet(session_maker, "bea") == (12_000, 12_000)


class TickingClock:
    """A clock one millisecond later at every reading: the race's debits straddle an expiry."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.ticks = itertools.count()

    def __call__(self) -> datetime:
        return self.start + timedelta(milliseconds=next(self.ticks))


@pytest.mark.parametrize(
    "settings_overrides",
    # Each debit its own statement, racing on the row locks (combined debits share one clock
    # reading per batch: tests/usage/test_combining.py).
    [{"database_pool_size": RACE_POOL_SIZE, "gateway_combine_debits": False}],
)
async def test_64_concurrent_debits_across_lots_with_one_expiring_mid_race_are_exact(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    start = utcnow()
    expiry = start + timedelta(milliseconds=40)
    expiring = await add_lot(session_maker, "cy", 500_000, expires_at=expiry)  # granted
    paid = await add_lot(
        session_maker, "cy", 300_000, source=LotSource.PURCHASE, expires_at=start + timedelta(30)
    )
    await deposit(client, admin_headers, "cy", 1_000_000)
    app.state.clock = TickingClock(start)
    responses = await together(
        [lambda: debit(client, gateway_headers, "cy", 10_000) for _ in range(64)]
    )
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses][:3]
    async with session_maker() as session:
        before_expiry = (
            await session.execute(
                text("SELECT count(*) FROM usage_records WHERE user_id = 'cy' AND created_at < :e"),
                {"e": expiry},
            )
        ).scalar_one()
        late_promo = (
            await session.execute(
                text(
                    "SELECT count(*) FROM ledger_entries e JOIN usage_records u"
                    " ON u.transaction_id = e.transaction_id"
                    " WHERE e.account_id = 'sys_promo_usage' AND u.created_at >= :e"
                ),
                {"e": expiry},
            )
        ).scalar_one()
    assert 0 < before_expiry < 64
    assert late_promo == 0, "a debit at or past the expiry drew from the expired lot"
    promo = await booked(session_maker, "promo_usage")
    used = await booked(session_maker, "usage")
    assert promo == 10_000 * before_expiry
    assert promo + used == 640_000
    assert await remaining(session_maker, expiring.id, paid.id) == [
        500_000 - promo,
        300_000 - min(used, 300_000),
    ]
    balance, tracked = await wallet(session_maker, "cy")
    assert balance == 1_800_000 - 640_000
    assert tracked == 500_000 - promo + 300_000 - min(used, 300_000)


async def test_a_batch_draws_exactly_as_its_debits_one_by_one(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Maker
) -> None:
    now = utcnow()
    singles = await _three_kinds(session_maker, "dee", now)
    batched = await _three_kinds(session_maker, "eve", now)
    amounts = [700, 2_000, 2_600, 4_100, 3_000]
    for amount in amounts:
        assert (await debit(client, gateway_headers, "dee", amount)).status_code == 201
    promo_singles = await booked(session_maker, "promo_usage")
    events = [
        {"user_id": "eve", "request_id": uuid.uuid4().hex, "amount_micros": amount}
        for amount in amounts
    ]
    response = await client.post(
        "/v1/internal/usage/batch", json={"events": events}, headers=gateway_headers
    )
    assert response.status_code == 200, response.text
    assert {r["status"] for r in response.json()["results"]} == {"applied"}
    assert await remaining(session_maker, *batched) == await remaining(session_maker, *singles)
    assert await wallet(session_maker, "eve") == await wallet(session_maker, "dee")
    assert await booked(session_maker, "promo_usage") == 2 * promo_singles


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
async def test_random_lots_and_events_end_the_same_batched_as_one_by_one(
    seed: int,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Random lots for a few users (grants and paid lots, expiring on the same day or later or
    never, sometimes one past its expiry and not yet swept) and random events spread over them:
    debited one by one on one set of wallets and sent as one batch on its twin set, which the
    batch statement applies whole (the planned path is never asked), each event answers the
    same balance, every lot ends with the same remainder, the wallets agree and the journal
    took the same into usage and promo usage."""
    rng = random.Random(seed)
    day = utcnow() + timedelta(days=3)
    users = [f"u{n}" for n in range(rng.randrange(1, 5))]
    lots_plan = {
        user: [
            (
                rng.choice([LotSource.GRANT, LotSource.PURCHASE]),
                rng.randrange(1, 5_000),
                rng.choice([None, day, day, day + timedelta(days=1), day + timedelta(days=7)]),
            )
            for _ in range(rng.randrange(0, 5))
        ]
        for user in users
    }
    expired = {user: rng.random() < 0.3 for user in users}
    events = [(user, rng.randrange(1, 3_000)) for user in users for _ in range(rng.randrange(1, 6))]
    rng.shuffle(events)
    # Never-expiring paid credit, at least what the user's events need beyond the live lots.
    untracked = {
        user: max(
            rng.choice([0, 2_000, 10_000]),
            sum(amount for u, amount in events if u == user)
            - sum(amount for _, amount, _ in lots_plan[user]),
        )
        for user in users
    }
    lot_ids: dict[str, list[str]] = {}
    for world in ("solo", "batched"):
        for user in users:
            owner = f"{world}{seed}-{user}"
            if untracked[user]:
                await deposit(client, admin_headers, owner, untracked[user])
            ids = [
                (await add_lot(session_maker, owner, amount, source=s, expires_at=e)).id
                for s, amount, e in lots_plan[user]
            ]
            if expired[user]:
                gone = await add_lot(session_maker, owner, 1_500, expires_at=day)
                async with session_scope(session_maker) as session:
                    await session.execute(
                        text(
                            "UPDATE credit_lots SET expires_at = now() - interval '1 minute'"
                            " WHERE id = :i"
                        ),
                        {"i": gone.id},
                    )
                ids.append(gone.id)
            lot_ids[owner] = ids

    async def journal() -> tuple[int, int]:
        return await booked(session_maker, "usage"), await booked(session_maker, "promo_usage")

    start = await journal()
    # One by one in the order the batch promises: by user id, each user's events in order.
    order = sorted(range(len(events)), key=lambda i: events[i][0])
    solo: dict[int, int] = {}
    for i in order:
        user, amount = events[i]
        single = await debit(client, gateway_headers, f"solo{seed}-{user}", amount)
        assert single.status_code == 201, single.text
        solo[i] = single.json()["balance_micros"]
    middle = await journal()

    async def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the batch statement left the batch to the planned path")

    monkeypatch.setattr(UsageStore, "_plan_and_write", never)
    body = [
        {"user_id": f"batched{seed}-{user}", "request_id": uuid.uuid4().hex, "amount_micros": a}
        for user, a in events
    ]
    response = await client.post(
        "/v1/internal/usage/batch", json={"events": body}, headers=gateway_headers
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["applied"] * len(events)
    assert [r["balance_micros"] for r in results] == [solo[i] for i in range(len(events))]
    end = await journal()
    assert (end[0] - middle[0], end[1] - middle[1]) == (middle[0] - start[0], middle[1] - start[1])
    for user in users:
        solo_user, batched_user = f"solo{seed}-{user}", f"batched{seed}-{user}"
        assert await remaining(session_maker, *lot_ids[batched_user]) == await remaining(
            session_maker, *lot_ids[solo_user]
        )
        assert await wallet(session_maker, batched_user) == await wallet(session_maker, solo_user)
    async with session_maker() as session:
        assert await verify_ledger(session) == []


async def test_a_capture_draws_the_lots_in_order_and_books_granted_use_apart(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Maker
) -> None:
    grant = await add_lot(session_maker, "fay", 2_000, expires_at=utcnow() + timedelta(days=1))
    await add_lot(session_maker, "fay", 10_000, source=LotSource.ADJUSTMENT)
    reserved = await client.post(
        "/v1/internal/holds",
        json={"user_id": "fay", "hold_id": "h-fay", "amount_micros": 3_000},
        headers=gateway_headers,
    )
    assert reserved.status_code == 201, reserved.text
    captured = await client.post(
        "/v1/internal/holds/h-fay/capture", json={"amount_micros": 2_500}, headers=gateway_headers
    )
    assert captured.status_code == 200, captured.text
    assert await remaining(session_maker, grant.id) == [0]
    assert await wallet(session_maker, "fay") == (9_500, 0)
    assert (await booked(session_maker, "promo_usage"), await booked(session_maker, "usage")) == (
        2_000,
        500,
    )


async def test_a_negative_adjustment_draws_the_lots_in_order_too(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_maker: Maker
) -> None:
    grant = await add_lot(session_maker, "gus", 2_000, expires_at=utcnow() + timedelta(days=1))
    await deposit(client, admin_headers, "gus", 5_000)
    await deposit(client, admin_headers, "gus", -3_000)
    assert await remaining(session_maker, grant.id) == [0]
    assert await wallet(session_maker, "gus") == (4_000, 0)
