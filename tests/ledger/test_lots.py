"""Credit lots: every credit is a lot, created with its posting, once per reference."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ledger import lots
from app.ledger.service import transfer
from app.models.base import utcnow
from app.models.ledger import Account, CreditLot, LedgerTransaction, LotSource, Txn
from testing.helpers.ledger import debit, deposit

Maker = async_sessionmaker[AsyncSession]


async def _grant(
    maker: Maker, user_id: str, amount: int, *, reference: str, expires_in: timedelta | None
) -> lots.Credited:
    async with session_scope(maker) as session:
        return await lots.credit(
            session,
            Txn(reference, "grant", "Welcome credit"),
            user_id=user_id,
            amount_micros=amount,
            source=LotSource.GRANT,
            account="promotions",
            expires_at=utcnow() + expires_in if expires_in else None,
        )


async def _lots(maker: Maker, user_id: str) -> list[CreditLot]:
    async with maker() as session:
        rows = await session.execute(
            select(CreditLot).where(CreditLot.user_id == user_id).order_by(CreditLot.id)
        )
        return list(rows.scalars())


async def _tracked(maker: Maker, user_id: str) -> int:
    async with maker() as session:
        return int(
            (
                await session.execute(
                    select(Account.tracked_micros).where(Account.user_id == user_id)
                )
            ).scalar_one()
        )


async def test_a_credit_and_its_lot_are_one_posting_once_per_reference(
    session_maker: Maker,
) -> None:
    first = await _grant(session_maker, "alice", 5_000_000, reference="grant:k1", expires_in=None)
    again = await _grant(session_maker, "alice", 5_000_000, reference="grant:k1", expires_in=None)
    assert not first.replayed
    assert again.replayed
    assert first.lot is not None
    assert again.lot is not None
    assert again.lot.id == first.lot.id
    (lot,) = await _lots(session_maker, "alice")
    assert (lot.source, lot.kind, lot.amount_micros, lot.remaining_micros) == (
        "grant",
        "granted",
        5_000_000,
        5_000_000,
    )
    assert lot.reference == "grant:k1"
    assert await _tracked(session_maker, "alice") == 5_000_000
    async with session_maker() as session:
        count = select(func.count()).select_from(LedgerTransaction)
        assert (await session.execute(count)).scalar_one() == 1


async def test_a_positive_adjustment_is_a_never_expiring_paid_lot_with_a_derived_remainder(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_maker: Maker
) -> None:
    await deposit(client, admin_headers, "bob", 3_000_000)
    (lot,) = await _lots(session_maker, "bob")
    assert (lot.source, lot.kind, lot.expires_at, lot.remaining_micros) == (
        "adjustment",
        "paid",
        None,
        None,
    )
    assert await _tracked(session_maker, "bob") == 0


async def test_a_top_up_makes_a_purchase_lot_expiring_when_the_operator_says(
    session_maker: Maker,
) -> None:
    from testing.factories import paid_order

    soon = utcnow() + timedelta(days=365)
    order = await paid_order(session_maker, user_id="carol", amount_micros=10_000_000)
    expiring = await paid_order(
        session_maker, user_id="carol", amount_micros=2_000_000, expires_at=soon
    )
    never, dated = await _lots(session_maker, "carol")
    assert (never.source, never.order_id, never.remaining_micros) == ("purchase", order.id, None)
    assert (dated.order_id, dated.expires_at, dated.remaining_micros) == (
        expiring.id,
        soon,
        2_000_000,
    )
    assert lots.paid_expiry(None, soon) is None
    assert lots.paid_expiry(365, soon) == soon + timedelta(days=365)


async def test_a_tracked_lot_repays_a_negative_balance_first(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_maker: Maker
) -> None:
    async with session_scope(session_maker) as session:  # a debt of 3, as a dispute leaves
        await transfer(
            session,
            Txn("dispute:dp_1", "dispute"),
            user_id="dave",
            amount_micros=-3_000_000,
            account="disputes",
            require_available=False,
        )
    credited = await _grant(
        session_maker, "dave", 5_000_000, reference="grant:k2", expires_in=timedelta(days=30)
    )
    assert credited.lot is not None
    assert credited.lot.remaining_micros == 2_000_000
    assert await _tracked(session_maker, "dave") == 2_000_000
    small = await _grant(
        session_maker, "erin", 1_000_000, reference="grant:k3", expires_in=timedelta(days=3)
    )
    assert small.lot is not None
    assert small.lot.remaining_micros == 1_000_000


async def test_the_migration_gave_every_system_account_of_lots(session_maker: Maker) -> None:
    async with session_maker() as session:
        names = set(
            (await session.execute(text("SELECT name FROM accounts WHERE kind = 'system'")))
            .scalars()
            .all()
        )
    assert {"promotions", "promo_usage", "promo_expired", "breakage"} <= names


async def test_usage_still_debits_a_wallet_of_paid_lots(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    await deposit(client, admin_headers, "fred", 1_000_000)
    response = await debit(client, gateway_headers, "fred", 400_000)
    assert response.status_code == 201, response.text


async def test_my_credits_list_each_lot_with_what_is_left_newest_first(
    app: Any,
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    user_headers: Any,
    session_maker: Maker,
) -> None:
    from testing.factories import paid_order
    from testing.helpers.limits import Clock
    from testing.helpers.lots import add_lot

    now = utcnow()
    app.state.clock = Clock(now)
    order = await paid_order(session_maker, user_id="kim", amount_micros=10_000_000)
    old_grant = await add_lot(session_maker, "kim", 1_000_000, expires_at=now - timedelta(1))
    grant = await add_lot(session_maker, "kim", 2_000_000, expires_at=now + timedelta(days=10))
    later = await add_lot(
        session_maker, "kim", 4_000_000, source=LotSource.PURCHASE, expires_at=now + timedelta(60)
    )
    assert (await debit(client, gateway_headers, "kim", 2_500_000)).status_code == 201
    kim = user_headers("kim")
    active = (await client.get("/v1/credits", headers=kim)).json()
    (bought,) = [lot for lot in await _lots(session_maker, "kim") if lot.order_id == order.id]
    # The grant went first (2.00), then the top-up expiring in 60 days (0.50 of 4.00).
    assert [(c["id"], c["remaining"], c["status"]) for c in active["data"]] == [
        (later.id, "3.500000", "active"),
        (bought.id, "10.000000", "active"),
    ]
    purchase = active["data"][1]
    assert (purchase["source"], purchase["kind"], purchase["order_id"]) == (
        "purchase",
        "paid",
        order.id,
    )
    expired = (await client.get("/v1/credits?status=expired", headers=kim)).json()
    assert [(c["id"], c["remaining"], c["kind"]) for c in expired["data"]] == [
        (old_grant.id, "1.000000", "granted")
    ]
    first = (await client.get("/v1/credits?status=all&limit=2", headers=kim)).json()
    rest = await client.get(
        f"/v1/credits?status=all&limit=2&cursor={first['next_cursor']}", headers=kim
    )
    listed = [c["id"] for c in first["data"] + rest.json()["data"]]
    assert listed == [later.id, grant.id, old_grant.id, purchase["id"]]
    assert rest.json()["data"][0]["status"] == "expired"
    assert first["data"][1]["status"] == "used"
    bad = await client.get("/v1/credits?status=spent", headers=kim)
    assert bad.status_code == 422
    balance = (await client.get("/v1/balance", headers=kim)).json()
    assert balance["balance"] == "14.500000"
    assert balance["available"] == "13.500000"  # the expired grant, not yet swept
    assert balance["expiring_soon"] == "0.000000"  # the 10-day grant is spent
    assert balance["next_expiry_at"] is not None
    assert balance["next_expiry_at"].startswith((now + timedelta(60)).date().isoformat())
    await add_lot(session_maker, "kim", 700_000, expires_at=now + timedelta(days=29))
    balance = (await client.get("/v1/balance", headers=kim)).json()
    assert balance["expiring_soon"] == "0.700000"


async def _rules(maker: Maker) -> list[str]:
    from app.ledger.verify import verify_ledger

    async with maker() as session:
        return [v.rule for v in await verify_ledger(session)]


async def _sql(maker: Maker, statement: str) -> None:
    async with session_scope(maker) as session:
        await session.execute(text(statement))


async def test_ledger_verify_checks_the_lots_against_the_wallets(session_maker: Maker) -> None:
    from app.ledger.service import Leg, post
    from testing.helpers.lots import add_lot

    lot = await add_lot(session_maker, "lia", 3_000, expires_at=utcnow() + timedelta(days=1))
    await add_lot(session_maker, "lia", 1_000, source=LotSource.ADJUSTMENT)
    assert await _rules(session_maker) == []
    await _sql(session_maker, "UPDATE accounts SET tracked_micros = 2999 WHERE user_id = 'lia'")
    # The tracked sum is off, and the 1 it lost now looks like credit without a lot.
    assert await _rules(session_maker) == ["wallet_tracked_matches_lots", "wallet_credit_in_lots"]
    await _sql(session_maker, "UPDATE accounts SET tracked_micros = 3000 WHERE user_id = 'lia'")
    await _sql(session_maker, f"UPDATE credit_lots SET swept_at = now() WHERE id = '{lot.id}'")
    assert await _rules(session_maker) == ["swept_lot_is_empty"]
    await _sql(session_maker, f"UPDATE credit_lots SET swept_at = NULL WHERE id = '{lot.id}'")
    async with session_scope(session_maker) as session:  # a credit that made no lot
        await post(
            session,
            Txn("adjustment:no-lot", "adjustment"),
            [Leg.wallet("lia", 5), Leg.account("adjustments", -5)],
        )
    assert await _rules(session_maker) == ["wallet_credit_in_lots"]
    async with session_scope(session_maker) as session:
        await post(
            session,
            Txn("adjustment:no-lot-back", "adjustment"),
            [Leg.wallet("lia", -5, require_available=False), Leg.account("adjustments", 5)],
        )
    assert await _rules(session_maker) == []
