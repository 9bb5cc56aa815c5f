"""The portal's auto top-up setting."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth import CurrentUser
from app.auto_topup import service
from app.auto_topup.schemas import AutoTopupIn, AutoTopupOut
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import ValidationFailed
from app.notifications.service import refuse_unusable_email, remember_email
from app.openapi import problem_responses

router = APIRouter(tags=["auto top-up"])


@router.get("/auto-topup", summary="Get my auto top-up")
async def get_my_auto_topup(user: CurrentUser, session: SessionDep) -> AutoTopupOut:
    """The caller's auto top-up setting and its state."""
    return await service.get_auto_topup(session, user.user_id)


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
    return await service.put_auto_topup(session, settings, user.user_id, body)
