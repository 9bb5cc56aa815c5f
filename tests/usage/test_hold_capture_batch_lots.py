"""Captures of wallets tracking credit lots in a batch (`POST /v1/internal/holds/captures`): the
batch statement applies them (no longer each alone over its lots), drawing each wallet's live
lots in `LOT_ORDER` exactly as the captures one by one would (`_capture_lots_sql`): the same lots
drawn by the same amounts, the rest from the never-expiring paid credit even below zero, the
same split between usage and promo usage, the same statement and export for the user."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ledger import lots
from app.ledger.verify import verify_ledger
from app.models.base import utcnow
from app.models.ledger import LotSource, Txn
from app.usage.repository import APPLICATION_NAME
from testing.helpers.captures import captures, combined, reserve, usage
from testing.helpers.concurrency import lock_waited
from testing.helpers.ledger import deposit
from testing.helpers.lots import add_lot, booked, remaining, wallet

Maker = async_sessionmaker[AsyncSession]

# (hold, reserved, captured): within the expiring grant (the head lot), past what is left of it
# into the expiring paid lot, a capture of 0 (a release), past that lot into the never-expiring
# paid credit, and past all the credit (the balance goes negative).
PLAN = [
    ("h0", 3_000, 3_000),
    ("h1", 4_000, 4_000),
    ("h2", 1_000, 0),
    ("h3", 9_000, 9_000),
    ("h4", 15_000, 30_000),
]


async def _wallet_with_lots(
    maker: Maker, client: httpx.AsyncClient, admin: Any, user: str
) -> list[str]:
    """20_000 of never-expiring paid credit (untracked), a grant of 5_000 expiring in 10 days,
    a paid lot of 8_000 expiring in 40 days, and a grant of 3_000 past its expiry, not swept
    (never drawn, not available): the ids of the three tracked lots."""
    await deposit(client, admin, user, 20_000)
    soon = await add_lot(maker, user, 5_000, expires_at=utcnow() + timedelta(days=10))
    later = await add_lot(
        maker, user, 8_000, source=LotSource.PURCHASE, expires_at=utcnow() + timedelta(days=40)
    )
    gone = await add_lot(maker, user, 3_000, expires_at=utcnow() + timedelta(days=1))
    async with session_scope(maker) as session:
        await session.execute(
            text("UPDATE credit_lots SET expires_at = now() - interval '1 minute' WHERE id = :i"),
            {"i": gone.id},
        )
    return [soon.id, later.id, gone.id]


def _strip(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k not in ("id", "created_at")}


async def _statement_and_export(
    client: httpx.AsyncClient, headers: dict[str, str], user: str
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    listing = await client.get(
        "/v1/balance/transactions", params={"kind": "hold_capture"}, headers=headers
    )
    assert listing.status_code == 200, listing.text
    export = await client.get("/v1/usage/export", headers=headers)
    rows = list(csv.DictReader(io.StringIO(export.text)))
    for row in rows:
        row.pop("created_at")
        row["request_id"] = row["request_id"].removeprefix(f"{user}-")
    return [_strip(line) for line in listing.json()["data"]], rows


async def test_batched_captures_over_lots_draw_them_exactly_as_captures_one_by_one(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Callable[..., dict[str, str]],
    session_maker: Maker,
) -> None:
    """Two wallets with the same lots, the same holds and captures: one captured one by one
    (each over its lots, alone), the other in one batch with a wallet tracking no lot between
    its captures and a capture of an unknown hold, then replayed. The batch applies both wallets'
    captures in its statement; each capture answers the balance the single one did, the lots
    end with the same remainders, the journal's usage and promo usage took the same, and the
    user's statement and export are the same line for line."""
    lot_ids = {}
    for user in ("solo", "batched"):
        lot_ids[user] = await _wallet_with_lots(session_maker, client, admin_headers, user)
        for hold_id, held, _ in PLAN:
            await reserve(client, gateway_headers, user, f"{user}-{hold_id}", held)
    await deposit(client, admin_headers, "plain", 50_000)
    for n in range(3):
        await reserve(client, gateway_headers, "plain", f"plain-{n}", 10_000)

    before = (await booked(session_maker, "usage"), await booked(session_maker, "promo_usage"))
    solo = []
    for hold_id, _, amount in PLAN:
        single = await client.post(
            f"/v1/internal/holds/solo-{hold_id}/capture",
            json={"amount_micros": amount, "model": "m", "input_tokens": 3, "output_tokens": 4},
            headers=gateway_headers,
        )
        assert single.status_code == 200, single.text
        solo.append(single.json()["balance_micros"])
    after_solo = (
        await booked(session_maker, "usage"),
        await booked(session_maker, "promo_usage"),
    )
    solo_booked = (after_solo[0] - before[0], after_solo[1] - before[1])
    # Of 46_000 captured: 5_000 of the grant (promo usage), 8_000 of the paid lot and the rest
    # of the never-expiring credit (usage); the expired grant untouched.
    assert solo_booked == (41_000, 5_000)
    assert solo == [33_000, 29_000, 29_000, 20_000, -10_000]
    assert await remaining(session_maker, *lot_ids["solo"]) == [0, 0, 3_000]
    assert await wallet(session_maker, "solo") == (-10_000, 3_000)

    items: list[dict[str, Any]] = []
    for n, (hold_id, _, amount) in enumerate(PLAN):
        items.append(
            usage(f"batched-{hold_id}", amount, model="m", input_tokens=3, output_tokens=4)
        )
        if n < 3:
            items.append(usage(f"plain-{n}", 7_000))
    items.append(usage("nope", 1))
    counted = combined()
    response = await captures(client, gateway_headers, items)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["captured"] * 8 + ["not_found"]
    # Both wallets' captures in the batch statement, none alone over the lots.
    assert combined() - counted == 8
    lots_results = [r for r in results[:8] if r["hold_id"].startswith("batched-")]
    assert [r["hold"]["balance_micros"] for r in lots_results] == solo
    assert [
        r["hold"]["balance_micros"] for r in results[:8] if r["hold_id"].startswith("plain")
    ] == [
        43_000,
        36_000,
        29_000,
    ]
    # A batch naming them again: replays (a hold named twice in one batch, or captured before,
    # leaves its wallet to go alone), nothing drawn again.
    again = await captures(client, gateway_headers, [items[0], items[2], items[0]])
    assert [r["status"] for r in again.json()["results"]] == ["replayed"] * 3
    assert again.json()["results"][0]["hold"]["captured_micros"] == 3_000
    after_batch = (
        await booked(session_maker, "usage"),
        await booked(session_maker, "promo_usage"),
    )
    assert (after_batch[0] - after_solo[0], after_batch[1] - after_solo[1]) == (
        solo_booked[0] + 21_000,
        solo_booked[1],
    )
    assert await remaining(session_maker, *lot_ids["batched"]) == [0, 0, 3_000]
    assert await wallet(session_maker, "batched") == (-10_000, 3_000)
    assert await wallet(session_maker, "plain") == (29_000, 0)

    seen = [
        await _statement_and_export(client, user_headers(user), user)
        for user in ("solo", "batched")
    ]
    assert len(seen[0][0]) == 4  # the capture of 0 posts nothing
    assert seen[0] == seen[1]
    async with session_maker() as session:
        reference = (
            (
                await session.execute(
                    text(
                        "SELECT DISTINCT t.reference FROM usage_records r"
                        " JOIN ledger_transactions t ON t.id = r.transaction_id"
                        " WHERE r.user_id IN ('batched', 'plain')"
                    )
                )
            )
            .scalars()
            .all()
        )
        assert len(reference) == 1
        assert reference[0].startswith("hold-batch:")
        assert await verify_ledger(session) == []


async def test_a_batch_of_one_wallets_captures_drawing_lot_after_lot_draws_them_in_order(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    """Many captures of one wallet whose lots run out in the middle of a capture: sooner expiry
    first, granted before paid at the same expiry, then the never-expiring credit; each
    capture's balance after it is the running balance."""
    await deposit(client, admin_headers, "una", 1_000)
    expiry = utcnow() + timedelta(days=5)
    paid = await add_lot(session_maker, "una", 2_000, source=LotSource.PURCHASE, expires_at=expiry)
    grant = await add_lot(session_maker, "una", 1_500, expires_at=expiry)
    first = await add_lot(session_maker, "una", 700, expires_at=utcnow() + timedelta(days=2))
    for n in range(6):
        await reserve(client, gateway_headers, "una", f"una-{n}", 800)
    promo = await booked(session_maker, "promo_usage")
    response = await captures(client, gateway_headers, [usage(f"una-{n}", 900) for n in range(6)])
    assert response.status_code == 200, response.text
    balances = [r["hold"]["balance_micros"] for r in response.json()["results"]]
    assert balances == [5_200 - 900 * (n + 1) for n in range(6)]
    # 5_400 drawn: 700 of the first lot, 1_500 of the grant, 2_000 of the paid lot, 1_200 of
    # the never-expiring credit (its 1_000 and 200 below zero).
    assert await remaining(session_maker, first.id, grant.id, paid.id) == [0, 0, 0]
    assert await wallet(session_maker, "una") == (-200, 0)
    assert await booked(session_maker, "promo_usage") - promo == 2_200
    async with session_maker() as session:
        assert await verify_ledger(session) == []


@pytest.mark.parametrize("settings_overrides", [{"service_token_cache_seconds": 60}])
async def test_a_batched_capture_that_waited_on_a_first_lots_credit_draws_that_lot(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    """The wallet's first tracked lot is credited after the batch's snapshot, before it locks
    the wallet: the lots it saw are not all the wallet tracks, so that wallet's capture goes
    alone, after the statement, and draws the lot; the other wallet's is applied in it."""
    await deposit(client, admin_headers, "ivy", 10_000)
    await deposit(client, admin_headers, "max", 10_000)
    await reserve(client, gateway_headers, "ivy", "ivy-1", 3_000)
    await reserve(client, gateway_headers, "max", "max-1", 3_000)
    promo, paid = await booked(session_maker, "promo_usage"), await booked(session_maker, "usage")
    counted = combined()
    async with session_scope(session_maker) as session:
        credited = await lots.credit(
            session,
            Txn(f"grant:{uuid.uuid4().hex}", "grant", "test grant"),
            user_id="ivy",
            amount_micros=2_000,
            source=LotSource.GRANT,
            account="promotions",
            expires_at=utcnow() + timedelta(days=30),
        )
        assert credited.lot is not None
        grant_id = credited.lot.id
        batch = asyncio.create_task(
            captures(client, gateway_headers, [usage("max-1", 1_000), usage("ivy-1", 2_500)])
        )
        if not await lock_waited(session, APPLICATION_NAME):
            pytest.fail("the batch never waited for the wallet's lock")
    response = await batch
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["captured", "captured"]
    assert combined() - counted == 1  # max's in the statement, ivy's alone
    assert await remaining(session_maker, grant_id) == [0]
    assert await wallet(session_maker, "ivy") == (12_000 - 2_500, 0)
    assert (
        await booked(session_maker, "promo_usage") - promo,
        await booked(session_maker, "usage") - paid,
    ) == (2_000, 500 + 1_000)
    async with session_maker() as session:
        assert await verify_ledger(session) == []


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_random_lots_and_captures_end_the_same_batched_as_one_by_one(
    seed: int,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    """Random lots (grants and paid lots, some expiring on the same day),
    random holds and captures (0 to twice the hold): captured one by one on one wallet and in
    one batch on its twin, each capture answers the same balance, every lot ends with the same
    remainder, and the journal took the same into usage and promo usage."""
    rng = random.Random(seed)
    day = utcnow() + timedelta(days=3)
    lots_plan = [
        (
            rng.choice([LotSource.GRANT, LotSource.PURCHASE]),
            rng.randrange(1, 5_000),
            day + timedelta(days=rng.choice([0, 0, 1, 7])),
        )
        for _ in range(rng.randrange(1, 5))
    ]
    holds = [rng.randrange(1, 1_500) for _ in range(rng.randrange(2, 9))]
    # Never-expiring paid credit, at least what the holds need beyond the lots.
    tracked = sum(amount for _, amount, _ in lots_plan)
    untracked = max(rng.choice([0, 2_000, 10_000]), sum(holds) - tracked)
    amounts = [rng.choice([0, rng.randrange(1, 2 * held + 1)]) for held in holds]
    lot_ids: dict[str, list[str]] = {}
    for user in (f"solo{seed}", f"batched{seed}"):
        if untracked:
            await deposit(client, admin_headers, user, untracked)
        lot_ids[user] = [
            (await add_lot(session_maker, user, amount, source=source, expires_at=expires)).id
            for source, amount, expires in lots_plan
        ]
        for n, held in enumerate(holds):
            await reserve(client, gateway_headers, user, f"{user}-{n}", held)

    async def journal() -> tuple[int, int]:
        return await booked(session_maker, "usage"), await booked(session_maker, "promo_usage")

    start = await journal()
    solo = []
    for n, amount in enumerate(amounts):
        single = await client.post(
            f"/v1/internal/holds/solo{seed}-{n}/capture",
            json={"amount_micros": amount},
            headers=gateway_headers,
        )
        assert single.status_code == 200, single.text
        solo.append(single.json()["balance_micros"])
    middle = await journal()
    counted = combined()
    response = await captures(
        client,
        gateway_headers,
        [{"hold_id": f"batched{seed}-{n}", "amount_micros": a} for n, a in enumerate(amounts)],
    )
    assert response.status_code == 200, response.text
    assert combined() - counted == len(amounts)
    assert [r["hold"]["balance_micros"] for r in response.json()["results"]] == solo
    end = await journal()
    assert (end[0] - middle[0], end[1] - middle[1]) == (middle[0] - start[0], middle[1] - start[1])
    assert await remaining(session_maker, *lot_ids[f"batched{seed}"]) == await remaining(
        session_maker, *lot_ids[f"solo{seed}"]
    )
    assert await wallet(session_maker, f"batched{seed}") == await wallet(
        session_maker, f"solo{seed}"
    )
    async with session_maker() as session:
        assert await verify_ledger(session) == []
