"""Stripe's webhook endpoint."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field

from app.deps import SessionMakerDep, SettingsDep, StripeDep
from app.errors import (
    EventInProgress,
    InvalidSignature,
    PaymentProviderUnavailable,
    PaymentsNotConfigured,
)
from app.models.orders import WebhookOutcome
from app.openapi import problem_responses
from app.stripe_gateway import StripeRequestFailed
from app.webhooks import service

router = APIRouter(tags=["webhooks"])


class WebhookAckOut(BaseModel):
    """The event was stored and applied (or was a repeat)."""

    received: bool = True
    event_id: str
    type: str
    duplicate: bool
    outcome: WebhookOutcome | None = Field(
        description="What applying it did; null for a duplicate (applied before)."
    )
    outcome_detail: str | None = Field(
        description="The specifics, e.g. `credited`, `no matching order`.",
        examples=["credited"],
    )


@router.post(
    "/webhooks/stripe",
    summary="Receive a Stripe event",
    # A 5xx means not stored: Stripe delivers the event again later.
    responses=problem_responses(
        InvalidSignature,
        EventInProgress,
        StripeRequestFailed,
        PaymentProviderUnavailable,
        PaymentsNotConfigured,
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "A Stripe event, signed in the `Stripe-Signature` header.",
        }
    },
)
async def receive_stripe_event(
    request: Request,
    maker: SessionMakerDep,
    stripe: StripeDep,
    settings: SettingsDep,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> WebhookAckOut:
    """Verify the signature on the raw body, claim the event id, apply it (Stripe is asked
    outside any transaction) and record the outcome; 200 only after that commit."""
    receipt = await service.receive_event(
        maker,
        settings,
        stripe,
        await request.body(),
        stripe_signature,
    )
    # The receipt's fields are the answer's (as admin/webhooks.py renders a stored event).
    return WebhookAckOut.model_validate(receipt, from_attributes=True)
