"""Small async factories for rows the tests need; keyword defaults, real ledger postings."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import session_scope
from app.ids import new_id
from app.ledger import lots
from app.models.base import utcnow
from app.models.ledger import LotSource, Txn
from app.models.orders import Order
from app.models.payment_methods import PaymentMethod
from app.usage.repository import UsageStore
from app.usage.store import Debited, UsageDebit


async def paid_order(
    maker: async_sessionmaker[AsyncSession],
    *,
    user_id: str = "user-1",
    amount_micros: int = 20_000_000,
    paid_at: datetime | None = None,
    created_at: datetime | None = None,
    status: str = "paid",
    mode: str = "elements",
    expires_at: datetime | None = None,
    **fields: Any,
) -> Order:
    """A paid top-up as fulfillment leaves it: the order row and its `topup:` credit."""
    order_id = new_id("ord")
    payment_intent = fields.pop("stripe_payment_intent_id", f"pi_{order_id[-12:]}")
    paid = paid_at or utcnow()
    async with session_scope(maker) as session:
        order = Order(
            id=order_id,
            user_id=user_id,
            status=status,
            mode=mode,
            amount_micros=amount_micros,
            currency="usd",
            stripe_payment_intent_id=payment_intent,
            stripe_charge_id=fields.pop("stripe_charge_id", f"ch_{order_id[-12:]}"),
            receipt_url=f"https://pay.stripe.test/receipts/{order_id}",
            livemode=False,
            created_at=created_at or paid - timedelta(minutes=1),
            paid_at=paid,
            **fields,
        )
        session.add(order)
        await session.flush()
        await lots.credit(
            session,
            Txn(f"topup:{payment_intent}", "topup", "Top-up", details={"order_id": order_id}),
            user_id=user_id,
            amount_micros=amount_micros,
            source=LotSource.PURCHASE,
            account="stripe",
            expires_at=expires_at,
            order_id=order_id,
        )
    return order


async def pending_order(
    maker: async_sessionmaker[AsyncSession],
    *,
    user_id: str = "user-1",
    amount_micros: int = 10_000_000,
    status: str = "pending",
    mode: str = "checkout",
    **fields: Any,
) -> Order:
    """An order that was never paid."""
    async with session_scope(maker) as session:
        order = Order(
            id=new_id("ord"),
            user_id=user_id,
            status=status,
            mode=mode,
            amount_micros=amount_micros,
            currency="usd",
            **fields,
        )
        session.add(order)
    return order


async def gateway_debit(
    session: AsyncSession, user_id: str, amount_micros: int, *, request_id: str | None = None
) -> Debited:
    """A usage debit as the gateway makes it (its one statement, `app.usage.repository`), run on
    the session's connection inside its transaction."""
    # A first statement through the session opens its transaction on the connection (the
    # driver adapter begins lazily), so the debit below runs inside it.
    await session.execute(text("SELECT 1"))
    connection = await (await session.connection()).get_raw_connection()
    # The store only sends statements: the session's asyncpg connection stands in for its pool.
    store = UsageStore(connection.driver_connection)
    usage = UsageDebit(user_id, request_id or new_id("req"), amount_micros, "test", None)
    return await store.debit(usage)


async def spend(maker: async_sessionmaker[AsyncSession], user_id: str, amount_micros: int) -> None:
    """Usage the gateway reported."""
    async with session_scope(maker) as session:
        await gateway_debit(session, user_id, amount_micros)


async def saved_card(
    maker: async_sessionmaker[AsyncSession],
    *,
    user_id: str = "user-1",
    payment_method_id: str | None = None,
    brand: str = "visa",
    last4: str = "4242",
    created_at: datetime | None = None,
) -> PaymentMethod:
    """A card recorded as saved by `record_saved_card` (not attached at any Stripe)."""
    async with session_scope(maker) as session:
        row = PaymentMethod(
            id=payment_method_id or f"pm_{new_id('t')[-20:]}",
            user_id=user_id,
            customer_id=f"cus_{user_id}",
            brand=brand,
            last4=last4,
            exp_month=12,
            exp_year=2034,
            created_at=created_at or utcnow(),
        )
        session.add(row)
    return row


def asyncpg_dsn(settings: Settings) -> str:
    """The test database's URL as asyncpg takes it."""
    return settings.database_url.get_secret_value().replace(
        "postgresql+asyncpg://", "postgresql://", 1
    )
