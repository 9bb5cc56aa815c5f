"""Credit lots: every credit is a lot, created with its posting, once per reference."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ledger import lots
from app.ledger.service import transfer
from app.models.base import utcnow
from app.models.ledger import Account, CreditLot, LedgerTransaction, LotSource
from testing.helpers.ledger import debit, deposit

Maker = async_sessionmaker[AsyncSession]


async def _grant(
    maker: Maker, user_id: str, amount: int, *, reference: str, expires_in: timedelta | None
) -> lots.Credited:
    async with session_scope(maker) as session:
        return await lots.credit(
            session,
            user_id=user_id,
            amount_micros=amount,
            source=LotSource.GRANT,
            reference=reference,
            kind="grant",
            account="promotions",
            expires_at=utcnow() + expires_in if expires_in else None,
            description="Welcome credit",
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
            reference="dispute:dp_1",
            kind="dispute",
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
