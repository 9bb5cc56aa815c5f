"""Operators correct a wallet with a signed adjustment and a reason, once per idempotency key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.adjustments.schemas import AdjustmentIn, AdjustmentOut
from app.adjustments.service import adjust_wallet
from app.auth import AdminUser
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import IdempotencyConflict, InsufficientBalance
from app.openapi import problem_responses
from app.schemas import CleanToken

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post(
    "/accounts/{user_id}/adjustments",
    summary="Adjust a user's balance",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {
            "model": AdjustmentOut,
            "description": "A replay of an earlier adjustment with the same key and body.",
        },
        **problem_responses(InsufficientBalance, IdempotencyConflict),
    },
)
async def create_adjustment(
    response: Response,
    user_id: Annotated[CleanToken, Path(min_length=1, max_length=255)],
    body: AdjustmentIn,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
) -> AdjustmentOut:
    """Credit (positive) or debit (negative) a wallet with a reason; audited."""
    out = await adjust_wallet(session, settings, actor=admin.user_id, user_id=user_id, body=body)
    if out.replayed:
        response.status_code = status.HTTP_200_OK
    return out
