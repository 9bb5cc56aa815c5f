"""Billing profiles, their tax IDs, and the user's Stripe Customer: all the SQL."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import one_or_none
from app.models.base import utcnow
from app.models.billing import BillingProfile, BillingTaxId, OrderDocument, TaxIdVerification
from app.models.orders import Order, StripeCustomer


async def get_stripe_customer_id(session: AsyncSession, user_id: str) -> str | None:
    """The user's Stripe Customer id, if one was created."""
    stmt = select(StripeCustomer.customer_id).where(StripeCustomer.user_id == user_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def save_stripe_customer(
    session: AsyncSession, user_id: str, customer_id: str, email: str | None
) -> str:
    """Remember the user's Stripe Customer (the first one stored wins) and return its id."""
    stmt = (
        insert(StripeCustomer)
        .values(user_id=user_id, customer_id=customer_id, email=email, created_at=utcnow())
        .on_conflict_do_nothing()
    )
    await session.execute(stmt)
    stored = await get_stripe_customer_id(session, user_id)
    assert stored is not None
    return stored


async def user_of_customer(session: AsyncSession, customer_id: str) -> str | None:
    stmt = select(StripeCustomer.user_id).where(StripeCustomer.customer_id == customer_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_profile(
    session: AsyncSession, user_id: str, *, for_update: bool = False
) -> BillingProfile | None:
    stmt = select(BillingProfile).where(BillingProfile.user_id == user_id)
    return await one_or_none(session, stmt, for_update=for_update)


async def tax_ids_of(session: AsyncSession, user_id: str) -> list[BillingTaxId]:
    stmt = select(BillingTaxId).where(BillingTaxId.user_id == user_id).order_by(BillingTaxId.id)
    return list((await session.execute(stmt)).scalars())


async def replace_tax_ids(
    session: AsyncSession, user_id: str, wanted: Sequence[tuple[str, str]]
) -> list[BillingTaxId]:
    """Make the profile's tax IDs exactly `wanted` (type, value): the ones kept keep what Stripe
    said of them, the new ones are `pending`. Returns them in `wanted`'s order."""
    current = {(t.type, t.value): t for t in await tax_ids_of(session, user_id)}
    gone = [t.id for key, t in current.items() if key not in set(wanted)]
    if gone:
        await session.execute(delete(BillingTaxId).where(BillingTaxId.id.in_(gone)))
    rows = []
    for tax_type, value in wanted:
        row = current.get((tax_type, value))
        if row is None:
            row = BillingTaxId(
                user_id=user_id,
                type=tax_type,
                value=value,
                verification=TaxIdVerification.PENDING,
                created_at=utcnow(),
            )
            session.add(row)
        rows.append(row)
    await session.flush()
    return rows


async def tax_id_by_stripe_id(
    session: AsyncSession, stripe_tax_id: str, *, for_update: bool = False
) -> BillingTaxId | None:
    stmt = select(BillingTaxId).where(BillingTaxId.stripe_tax_id == stripe_tax_id)
    return await one_or_none(session, stmt, for_update=for_update)


async def tax_id_by_value(
    session: AsyncSession, user_id: str, tax_type: str, value: str
) -> BillingTaxId | None:
    stmt = (
        select(BillingTaxId)
        .where(
            BillingTaxId.user_id == user_id,
            BillingTaxId.type == tax_type,
            BillingTaxId.value == value,
        )
        .with_for_update()
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def documents_of(session: AsyncSession, order_ids: Sequence[str]) -> list[OrderDocument]:
    """The documents issued for these orders, oldest first."""
    if not order_ids:
        return []
    stmt = (
        select(OrderDocument)
        .where(OrderDocument.order_id.in_(order_ids))
        .order_by(OrderDocument.created_at, OrderDocument.id)
    )
    return list((await session.execute(stmt)).scalars())


async def document_by_stripe_id(session: AsyncSession, stripe_id: str) -> OrderDocument | None:
    stmt = select(OrderDocument).where(OrderDocument.stripe_id == stripe_id).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def order_of_invoice(
    session: AsyncSession, invoice_id: str, *, for_update: bool = False
) -> Order | None:
    """The order an invoice is for: the one it pays, or one it was reissued for."""
    stmt = select(Order).where(Order.stripe_invoice_id == invoice_id)
    order = await one_or_none(session, stmt, for_update=for_update)
    if order is not None:
        return order
    doc = await session.execute(
        select(OrderDocument.order_id).where(OrderDocument.stripe_id == invoice_id)
    )
    order_id = doc.scalar_one_or_none()
    if order_id is None:
        return None
    return await one_or_none(
        session, select(Order).where(Order.id == order_id), for_update=for_update
    )
