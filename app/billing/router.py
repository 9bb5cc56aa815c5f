"""The portal's billing profile: who invoices are made out to, and whether to issue them."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth import CurrentUser
from app.billing import service
from app.billing.schemas import (
    AddressOut,
    BillingProfileIn,
    BillingProfileOut,
    TaxIdOut,
    TaxIdType,
)
from app.db import SessionDep
from app.deps import StripeWorkDep
from app.errors import PaymentProviderUnavailable, ValidationFailed
from app.models.billing import TaxIdVerification
from app.openapi import problem_responses
from app.stripe_gateway import StripeRequestFailed

router = APIRouter(tags=["billing profile"])


def profile_out(profile: service.Profile | None) -> BillingProfileOut:
    if profile is None:
        return BillingProfileOut(
            legal_name=None,
            email=None,
            address=None,
            tax_ids=[],
            po_number=None,
            invoices=False,
            synced=False,
            updated_at=None,
        )
    row = profile.row
    return BillingProfileOut(
        legal_name=row.legal_name,
        email=row.email,
        address=AddressOut.model_validate(profile.address()),
        tax_ids=[
            TaxIdOut(
                type=TaxIdType(t.type),
                value=t.value,
                verification=TaxIdVerification(t.verification),
            )
            for t in profile.tax_ids
        ],
        po_number=row.po_number,
        invoices=row.invoices,
        synced=row.synced_at is not None,
        updated_at=row.updated_at,
    )


@router.get("/billing-profile", summary="Get my billing profile")
async def get_my_billing_profile(user: CurrentUser, session: SessionDep) -> BillingProfileOut:
    """Who the caller's invoices are made out to, and each tax ID's verification by Stripe
    (every field empty until the first PUT)."""
    return profile_out(await service.load_profile(session, user.user_id))


@router.put(
    "/billing-profile",
    summary="Set my billing profile",
    responses=problem_responses(ValidationFailed, StripeRequestFailed, PaymentProviderUnavailable),
)
async def put_my_billing_profile(
    body: BillingProfileIn, user: CurrentUser, work: StripeWorkDep
) -> BillingProfileOut:
    """Replace the billing profile and mirror it to the Stripe Customer (name, email, address,
    tax IDs added and removed). New tax IDs are `pending` until Stripe verifies them; only a
    `verified` one makes a purchase a business purchase. When Stripe fails, the profile is
    stored unsynced and the error returned: repeat the PUT."""
    return profile_out(await service.put_profile(work.maker, work.stripe, user.user_id, body))
