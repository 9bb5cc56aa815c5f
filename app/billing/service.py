"""Billing profiles: stored, then mirrored to the user's Stripe Customer.

A PUT is stored in one short transaction (the profile and its tax IDs, `synced_at` cleared),
then mirrored with no transaction open (`app/db.py`'s policy): the Customer's name, email and
address are set, the tax IDs Stripe has that the profile does not are removed and the missing
ones added (a diff against Stripe's list, so a repeated or interrupted mirror converges), and
what Stripe answered (each tax ID's id and verification) is written back in a second short
transaction. Stripe's later verification of a tax ID arrives by webhook
(`app/billing/webhooks.py`), read from Stripe again, never from the event's copy."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.billing import repository
from app.billing.schemas import BillingProfileIn
from app.db import session_scope
from app.models.base import utcnow
from app.models.billing import BillingProfile, BillingTaxId, TaxIdVerification
from app.stripe_gateway import StripeGateway, StripeJSON, StripeObjectNotFound

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Profile:
    """A billing profile as stored, with its tax IDs."""

    row: BillingProfile
    tax_ids: list[BillingTaxId]

    @property
    def verified_tax_ids(self) -> list[BillingTaxId]:
        """The tax IDs Stripe verified: only these make a purchase a business purchase."""
        return [t for t in self.tax_ids if t.verification == TaxIdVerification.VERIFIED]

    def address(self) -> dict[str, str | None]:
        row = self.row
        return {
            "line1": row.line1,
            "line2": row.line2,
            "city": row.city,
            "postal_code": row.postal_code,
            "state": row.state,
            "country": row.country,
        }


async def load_profile(session: AsyncSession, user_id: str) -> Profile | None:
    """The user's billing profile, or None when they never set one."""
    row = await repository.get_profile(session, user_id)
    if row is None:
        return None
    return Profile(row, await repository.tax_ids_of(session, user_id))


async def put_profile(
    maker: async_sessionmaker[AsyncSession],
    stripe: StripeGateway,
    user_id: str,
    body: BillingProfileIn,
) -> Profile:
    """Store the whole profile, then mirror it to the Stripe Customer (when Stripe is
    configured). A Stripe failure leaves the profile stored and unsynced (`synced: false`) and
    is raised; repeating the PUT finishes the mirror."""
    async with session_scope(maker) as session:
        row = await repository.get_profile(session, user_id, for_update=True)
        if row is None:
            row = BillingProfile(user_id=user_id, created_at=utcnow())
            session.add(row)
        address = body.address
        row.legal_name = body.legal_name
        row.email = body.email
        for part in ("line1", "line2", "city", "postal_code", "state", "country"):
            setattr(row, part, getattr(address, part))
        row.po_number = body.po_number
        row.invoices = body.invoices
        row.synced_at = None
        row.updated_at = utcnow()
        await session.flush()
        await repository.replace_tax_ids(
            session, user_id, [(t.type.value, t.value) for t in body.tax_ids]
        )
    if stripe.configured:
        await mirror_profile(maker, stripe, user_id)
    async with session_scope(maker) as session:
        stored = await load_profile(session, user_id)
    assert stored is not None
    return stored


async def customer_for(
    maker: async_sessionmaker[AsyncSession], stripe: StripeGateway, user_id: str, email: str | None
) -> str:
    """The user's Stripe Customer id, created once (key `customer:<user_id>`)."""
    async with session_scope(maker) as session:
        customer_id = await repository.get_stripe_customer_id(session, user_id)
    if customer_id is not None:
        return customer_id
    customer = await stripe.get_or_create_customer(user_id, email)
    async with session_scope(maker) as session:
        return await repository.save_stripe_customer(session, user_id, str(customer["id"]), email)


def _key(tax_id: StripeJSON) -> tuple[str, str]:
    return str(tax_id.get("type")), str(tax_id.get("value"))


def _verification(tax_id: StripeJSON) -> str:
    status = (tax_id.get("verification") or {}).get("status")
    return status if status in set(TaxIdVerification) else TaxIdVerification.UNAVAILABLE


async def mirror_profile(
    maker: async_sessionmaker[AsyncSession], stripe: StripeGateway, user_id: str
) -> None:
    """Make the Stripe Customer match the stored profile (see the module docstring)."""
    async with session_scope(maker) as session:
        profile = await load_profile(session, user_id)
    if profile is None:
        return
    row, stamp = profile.row, profile.row.updated_at
    customer_id = await customer_for(maker, stripe, user_id, row.email)
    await stripe.update_customer_details(
        customer_id, name=row.legal_name, email=row.email, address=profile.address()
    )
    wanted = {
        (t.type, t.value): t
        for t in profile.tax_ids
        if t.verification != TaxIdVerification.UNVERIFIED
    }
    at_stripe: dict[tuple[str, str], StripeJSON] = {}
    for tax_id in await stripe.list_customer_tax_ids(customer_id):
        if _key(tax_id) in wanted and _key(tax_id) not in at_stripe:
            at_stripe[_key(tax_id)] = tax_id
        else:
            await stripe.delete_customer_tax_id(customer_id, str(tax_id["id"]))
    for key, ours in wanted.items():
        if key not in at_stripe:
            at_stripe[key] = await stripe.create_customer_tax_id(
                customer_id, tax_type=ours.type, value=ours.value, key=f"tax-id:{ours.id}"
            )
    async with session_scope(maker) as session:
        current = await repository.get_profile(session, user_id, for_update=True)
        for key, tax_id in at_stripe.items():
            stored = await repository.tax_id_by_value(session, user_id, *key)
            if stored is not None:
                stored.stripe_tax_id = str(tax_id["id"])
                stored.verification = _verification(tax_id)
        if current is not None and current.updated_at == stamp:
            current.synced_at = utcnow()
    log.info("billing_profile_mirrored", user_id=user_id, tax_ids=len(at_stripe))


async def apply_tax_id(
    maker: async_sessionmaker[AsyncSession], stripe: StripeGateway, tax_id: StripeJSON
) -> str:
    """A `customer.tax_id.*` event: Stripe's current word on the tax ID (read again, outside
    any transaction) onto our copy."""
    customer_id = tax_id.get("customer") or (tax_id.get("owner") or {}).get("customer")
    if not isinstance(customer_id, str):
        return "ignored: not a customer's tax ID"
    async with session_scope(maker) as session:
        user_id = await repository.user_of_customer(session, customer_id)
    if user_id is None:
        return "ignored: not our customer"
    try:
        current: StripeJSON | None = await stripe.retrieve_customer_tax_id(
            customer_id, str(tax_id["id"])
        )
    except StripeObjectNotFound:
        current = None
    async with session_scope(maker) as session:
        row = await repository.tax_id_by_stripe_id(session, str(tax_id["id"]), for_update=True)
        if row is None and current is not None:
            row = await repository.tax_id_by_value(session, user_id, *_key(current))
        if row is None:
            return "ignored: not on the billing profile"
        if current is None:
            # Removed at Stripe (the Dashboard): the next mirror adds it again.
            row.stripe_tax_id = None
            row.verification = TaxIdVerification.PENDING
            return "tax ID removed at Stripe"
        row.verification = _verification(current)
        if row.verification != TaxIdVerification.UNVERIFIED:
            row.stripe_tax_id = str(current["id"])
            return f"tax ID {row.verification}"
        # Stripe Tax reads every tax ID on the Customer, verified or not: one that failed
        # verification is taken off the Customer so the buyer is taxed as a consumer (it stays
        # on the profile, shown `unverified`, until the user corrects it).
        row.stripe_tax_id = None
    await stripe.delete_customer_tax_id(customer_id, str(current["id"]))
    return "tax ID unverified: removed from the Customer"
