"""The portal's auto top-up setting."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth import CurrentUser
from app.auto_topup import rules, service
from app.auto_topup.schemas import AutoTopupIn, AutoTopupOut
from app.auto_topup.service import AutoTopupState
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import ValidationFailed
from app.models.payment_methods import AutoTopupStatus
from app.money import format_amount
from app.notifications.service import refuse_unusable_email, remember_email
from app.openapi import problem_responses

router = APIRouter(tags=["auto top-up"])


def auto_topup_out(state: AutoTopupState) -> AutoTopupOut:
    """The setting as the portal shows it: disabled with nulls when never set; the next
    attempt only while it is active."""
    row = state.settings
    next_attempt_at = None
    if row is not None and row.status == AutoTopupStatus.ACTIVE:
        next_attempt_at = rules.next_allowed_attempt(
            last_attempt_at=row.last_attempt_at, next_attempt_at=row.next_attempt_at
        )
    return AutoTopupOut(
        enabled=row is not None and row.status != AutoTopupStatus.DISABLED,
        threshold=format_amount(row.threshold_micros) if row else None,
        amount=format_amount(row.amount_micros) if row else None,
        payment_method_id=row.payment_method_id if row else None,
        monthly_limit=format_amount(row.monthly_limit_micros) if row else None,
        status=row.status if row else AutoTopupStatus.DISABLED,
        paused_reason=row.paused_reason if row else None,
        last_attempt_at=row.last_attempt_at if row else None,
        next_attempt_at=next_attempt_at,
        spent_this_month=format_amount(state.spent_this_month_micros),
    )


@router.get("/auto-topup", summary="Get my auto top-up")
async def get_my_auto_topup(user: CurrentUser, session: SessionDep) -> AutoTopupOut:
    """The caller's auto top-up setting and its state."""
    return auto_topup_out(await service.get_auto_topup(session, user.user_id))


@router.put(
    "/auto-topup",
    summary="Set my auto top-up",
    responses=problem_responses(ValidationFailed),
)
async def put_my_auto_topup(
    body: AutoTopupIn, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> AutoTopupOut:
    """Replace the caller's auto top-up. Only `enabled: true` enables it or lifts a pause. A
    token whose `email` claim is not exactly one valid address is a 422 (`token.email`)."""
    refuse_unusable_email(user)
    await remember_email(session, user.user_id, user.email)
    return auto_topup_out(await service.put_auto_topup(session, settings, user.user_id, body))
