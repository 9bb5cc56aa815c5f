"""The portal's low-balance alerts."""

from __future__ import annotations

from fastapi import APIRouter

from app.alerts import service
from app.alerts.schemas import AlertsIn, AlertsOut
from app.alerts.service import AlertSettings
from app.auth import CurrentUser
from app.db import SessionDep
from app.errors import ValidationFailed
from app.money import format_amount
from app.notifications.service import refuse_unusable_email, remember_email
from app.openapi import problem_responses

router = APIRouter(tags=["alerts"])


def alerts_out(alerts: AlertSettings) -> AlertsOut:
    return AlertsOut(
        low_balance_thresholds=[format_amount(m) for m in alerts.thresholds_micros],
        email=alerts.email,
    )


@router.get("/alerts", summary="Get my alerts")
async def get_my_alerts(user: CurrentUser, session: SessionDep) -> AlertsOut:
    """The caller's low-balance thresholds and whether notifications are emailed."""
    return alerts_out(await service.get_alerts(session, user.user_id))


@router.put("/alerts", summary="Set my alerts", responses=problem_responses(ValidationFailed))
async def put_my_alerts(body: AlertsIn, user: CurrentUser, session: SessionDep) -> AlertsOut:
    """Replace the caller's low-balance thresholds (at most 5) and the email choice. A token
    whose `email` claim is not exactly one valid address is a 422 (`token.email`)."""
    refuse_unusable_email(user)
    await remember_email(session, user.user_id, user.email)
    return alerts_out(await service.put_alerts(session, user.user_id, body))
