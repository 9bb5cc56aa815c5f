"""Operators correct a wallet with a signed adjustment and a reason, once per idempotency key."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.adjustments.schemas import AdjustmentIn, AdjustmentOut
from app.adjustments.service import adjust_wallet
from app.admin.params import UserId, create_route
from app.auth import AdminUser
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import IdempotencyConflict, InsufficientBalance
from app.ledger.service import PostResult

router = APIRouter(prefix="/admin", tags=["admin"])


def adjustment_out(result: PostResult, user_id: str, body: AdjustmentIn) -> AdjustmentOut:
    wallet = result.wallets[user_id]
    return AdjustmentOut(
        transaction_id=result.transaction.id,
        user_id=user_id,
        amount_micros=body.amount_micros,
        reason=body.reason,
        idempotency_key=body.idempotency_key,
        created_at=result.transaction.created_at,
        balance_micros=wallet.balance_micros,
        held_micros=wallet.held_micros,
        available_micros=wallet.available_micros,
        replayed=result.replayed,
    )


@create_route(
    router,
    "/accounts/{user_id}/adjustments",
    "Adjust a user's balance",
    AdjustmentOut,
    "A replay of an earlier adjustment with the same key and body.",
    InsufficientBalance,
    IdempotencyConflict,
)
async def create_adjustment(
    response: Response,
    user_id: UserId,
    body: AdjustmentIn,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
) -> AdjustmentOut:
    """Credit (positive) or debit (negative) a wallet with a reason; audited."""
    result = await adjust_wallet(session, settings, actor=admin.user_id, user_id=user_id, body=body)
    if result.replayed:
        response.status_code = status.HTTP_200_OK
    return adjustment_out(result, user_id, body)
