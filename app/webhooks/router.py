"""Stripe's webhook endpoint."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Request
from pydantic import BaseModel

from app.db import SessionDep
from app.deps import SessionMakerDep, SettingsDep, StripeDep
from app.errors import InvalidSignature, PaymentProviderUnavailable, PaymentsNotConfigured
from app.openapi import problem_responses
from app.purchase import service as purchase_service
from app.stripe_gateway import StripeRequestFailed
from app.webhooks import service

router = APIRouter(tags=["webhooks"])


class WebhookAckOut(BaseModel):
    """The event was stored and applied (or was a repeat)."""

    received: bool = True
    event_id: str
    type: str
    duplicate: bool
    outcome: str | None


@router.post(
    "/webhooks/stripe",
    summary="Receive a Stripe event",
    # A 5xx means not stored: Stripe delivers the event again later.
    responses=problem_responses(
        InvalidSignature, StripeRequestFailed, PaymentProviderUnavailable, PaymentsNotConfigured
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
    session: SessionDep,
    maker: SessionMakerDep,
    stripe: StripeDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> WebhookAckOut:
    """Verify the signature on the raw body, store the event once and apply it; 200 only after
    the commit."""
    receipt = await service.receive_event(
        session,
        settings,
        stripe,
        await request.body(),
        stripe_signature,
    )
    if receipt.type == "payment_intent.payment_failed" and not receipt.duplicate:
        # After the response and the commit, so that no Stripe call runs inside the transaction.
        background.add_task(
            purchase_service.stop_card_testing,
            maker,
            stripe,
            settings,
            receipt.object_id,
        )
    return WebhookAckOut(
        event_id=receipt.event_id,
        type=receipt.type,
        duplicate=receipt.duplicate,
        outcome=receipt.outcome,
    )
