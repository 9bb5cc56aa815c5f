"""Operators replay a stored Stripe event."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from app.audit.service import record_admin_action
from app.auth import AdminUser
from app.db import SessionDep
from app.deps import SessionMakerDep, SettingsDep, StripeDep
from app.errors import NotFound, PaymentProviderUnavailable, PaymentsNotConfigured
from app.models.orders import WebhookOutcome
from app.openapi import problem_responses
from app.schemas import CleanStr
from app.webhooks import service

router = APIRouter(prefix="/admin/webhook-events", tags=["admin"])


class WebhookEventOut(BaseModel):
    """A received Stripe event and what applying it did."""

    id: str
    type: str
    livemode: bool
    object_id: str | None
    outcome: WebhookOutcome | None = Field(description="What applying it did; null until applied.")
    outcome_detail: str | None = Field(
        description="The specifics, e.g. `credited`, `replayed: already paid`."
    )
    received_at: datetime


@router.post(
    "/{event_id}/replay",
    summary="Replay a Stripe event",
    responses=problem_responses(NotFound, PaymentProviderUnavailable, PaymentsNotConfigured),
)
async def admin_replay_webhook_event(
    event_id: Annotated[CleanStr, Path(min_length=1, max_length=255)],
    admin: AdminUser,
    session: SessionDep,
    maker: SessionMakerDep,
    settings: SettingsDep,
    stripe: StripeDep,
) -> WebhookEventOut:
    """Apply a stored event again through the same idempotent handlers; audited."""
    row = await service.replay_event(maker, settings, stripe, event_id)
    await record_admin_action(
        session,
        actor=admin.user_id,
        action="webhook.replay",
        subject_type="stripe_event",
        subject_id=event_id,
        details={"type": row.type, "outcome": row.outcome, "outcome_detail": row.outcome_detail},
    )
    return WebhookEventOut.model_validate(row, from_attributes=True)
