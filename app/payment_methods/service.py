"""Saved cards: the rules.

Removing a card follows the transaction policy: a short transaction checks it is the caller's,
Stripe detaches it with no transaction open, and a short transaction marks it removed and
pauses the auto top-up that used it. Stripe's `payment_method.detached` event (also sent for our
own detach) lands on the same idempotent `mark_detached()`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.errors import NotFound
from app.models.base import utcnow
from app.models.payment_methods import PaymentMethod
from app.pagination import PageRequest, Slice, decode_instant_cursor, encode_instant_cursor
from app.payment_methods import repository
from app.payment_methods.events import card_removed
from app.stripe_gateway import StripeGateway, StripeJSON, StripeObjectNotFound, expandable_id

log = structlog.get_logger(__name__)


def card_fields(payment_method: StripeJSON) -> dict[str, Any] | None:
    """`brand`, `last4`, `exp_month`, `exp_year` of a card PaymentMethod (None otherwise)."""
    card = payment_method.get("card")
    if payment_method.get("type") != "card" or not isinstance(card, dict):
        return None
    return {
        "brand": str(card.get("brand") or "unknown")[:32],
        "last4": str(card.get("last4") or "")[-4:],
        "exp_month": int(card.get("exp_month") or 0),
        "exp_year": int(card.get("exp_year") or 0),
    }


def saved_card_of_payment_intent(payment_intent: StripeJSON) -> StripeJSON | None:
    """The card a succeeded PaymentIntent saved (`setup_future_usage` set, a customer, a card
    charge), shaped as the PaymentMethod `record_saved_card` takes, built from the PaymentIntent
    with `latest_charge` expanded (what fulfillment already has): no extra Stripe call inside
    the fulfillment transaction. None when it saved nothing."""
    charge = payment_intent.get("latest_charge")
    customer = expandable_id(payment_intent.get("customer"))
    pm_id = expandable_id(payment_intent.get("payment_method"))
    if (
        payment_intent.get("status") != "succeeded"
        or payment_intent.get("setup_future_usage") not in ("off_session", "on_session")
        or customer is None
        or pm_id is None
        or not isinstance(charge, dict)
    ):
        return None
    details = charge.get("payment_method_details") or {}
    if details.get("type") != "card" or not isinstance(details.get("card"), dict):
        return None
    return {"id": pm_id, "type": "card", "customer": customer, "card": details["card"]}


async def record_saved_card(
    session: AsyncSession, user_id: str, payment_method: StripeJSON
) -> PaymentMethod | None:
    """Record a card saved by a payment with `setup_future_usage=off_session` as the user's
    (call it in the fulfillment transaction, with the succeeded PaymentIntent's
    `payment_method`, expanded or retrieved). Idempotent; a non-card method, or a card attached
    to no customer (Stripe did not save it), records nothing and returns None."""
    fields = card_fields(payment_method)
    customer = expandable_id(payment_method.get("customer"))
    if fields is None or customer is None:
        return None
    existing = await repository.get(session, str(payment_method["id"]), for_update=True)
    if existing is not None:
        if existing.user_id != user_id:
            log.error(
                "saved_card_of_another_user",
                payment_method_id=existing.id,
                owner=existing.user_id,
                user_id=user_id,
            )
            return None
        if existing.detached_at is None:
            for key, value in fields.items():
                setattr(existing, key, value)
        return existing
    row = repository.add(
        session,
        id=str(payment_method["id"]),
        user_id=user_id,
        customer_id=customer,
        created_at=utcnow(),
        **fields,
    )
    await session.flush()
    return row


async def list_payment_methods(
    session: AsyncSession, user_id: str, page: PageRequest
) -> Slice[PaymentMethod]:
    """The user's saved cards, newest first."""
    after = decode_instant_cursor(page.cursor) if page.cursor else None
    rows = await repository.list_active(session, user_id, after=after, limit=page.limit + 1)
    items = rows[: page.limit]
    more = len(rows) > page.limit
    last = items[-1] if more else None
    return Slice(items, encode_instant_cursor(last.created_at, last.id) if last else None)


async def mark_detached(
    session: AsyncSession, payment_method_id: str, *, now: datetime | None = None
) -> str:
    """The card is detached at Stripe: mark it removed and pause the auto top-up that charges
    it. Idempotent; returns an outcome for the webhook log."""
    row = await repository.get(session, payment_method_id, for_update=True)
    if row is None:
        return "ignored: unknown payment method"
    if row.detached_at is not None:
        return "ignored: already detached"
    row.detached_at = now or utcnow()
    await card_removed(session, row.user_id, row.id)  # auto top-up pauses (`app.wiring`)
    return "detached"


async def remove_payment_method(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    user_id: str,
    payment_method_id: str,
) -> None:
    """Detach the caller's card at Stripe and record it removed (404 for another user's card
    or one already removed). No transaction is open during the Stripe call."""
    async with session_scope(maker) as session:
        row = await repository.get_active_of_user(session, user_id, payment_method_id)
        if row is None:
            raise NotFound("No such payment method.")
    try:
        await stripe.detach_payment_method(payment_method_id)
    except StripeObjectNotFound:
        log.warning("saved_card_missing_at_stripe", payment_method_id=payment_method_id)
    async with session_scope(maker) as session:
        await mark_detached(session, payment_method_id)


async def apply_card_update(session: AsyncSession, payment_method: StripeJSON) -> str:
    """The card network updated a saved card (`payment_method.automatically_updated`)."""
    row = await repository.get(session, str(payment_method.get("id")), for_update=True)
    if row is None:
        return "ignored: unknown payment method"
    fields = card_fields(payment_method)
    if fields is None:
        return "ignored: not a card"
    for key, value in fields.items():
        setattr(row, key, value)
    return "updated"
