"""Operators correct a wallet with a signed adjustment and a reason, once per idempotency key."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import record_admin_action
from app.auth import AdminUser
from app.config import Settings
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import IdempotencyConflict, InsufficientBalance, ValidationFailed
from app.ledger.service import Leg, hash_request, post
from app.openapi import problem_responses
from app.schemas import CleanStr, CleanText, StrictModel

router = APIRouter(prefix="/admin", tags=["admin"])


class AdjustmentIn(StrictModel):
    """A signed correction of a wallet: positive credits it, negative debits it (a debit needs
    the available balance)."""

    amount_micros: Annotated[
        int, Field(strict=True, description="Signed micro-USD, not 0.", examples=[5_000_000])
    ]
    reason: Annotated[CleanText, StringConstraints(min_length=3, max_length=500)]
    idempotency_key: Annotated[
        CleanStr, StringConstraints(min_length=1, max_length=200, pattern=r"^\S+$")
    ] = Field(description="Retries with the same key and body answer the original adjustment.")


class AdjustmentOut(BaseModel):
    """An adjustment and the wallet right after it (for a replay: as it stands now)."""

    transaction_id: str
    user_id: str
    amount_micros: int
    reason: str
    idempotency_key: str
    created_at: datetime
    balance_micros: int
    held_micros: int
    available_micros: int
    replayed: bool


async def adjust_wallet(
    session: AsyncSession,
    settings: Settings,
    *,
    actor: str,
    user_id: str,
    body: AdjustmentIn,
) -> AdjustmentOut:
    """Post the adjustment against the `adjustments` account and audit it (first time only)."""
    if body.amount_micros == 0 or abs(body.amount_micros) > settings.max_amount_micros:
        raise ValidationFailed(
            "amount_micros must be non-zero and at most the maximum amount.",
            errors=[
                {
                    "field": "amount_micros",
                    "message": f"must be non-zero, at most {settings.max_amount_micros} in size",
                }
            ],
        )
    request_hash = hash_request(
        {"user_id": user_id, "amount_micros": body.amount_micros, "reason": body.reason}
    )
    result = await post(
        session,
        reference=f"adjustment:{body.idempotency_key}",
        kind="adjustment",
        legs=[
            Leg.wallet(user_id, body.amount_micros),
            Leg.account("adjustments", -body.amount_micros),
        ],
        user_id=user_id,
        description="Balance adjustment",
        request_hash=request_hash,
        details={"reason": body.reason, "actor": actor},
    )
    if result.replayed:
        if result.transaction.request_hash != request_hash:
            raise IdempotencyConflict(
                f"idempotency_key {body.idempotency_key!r} was used with a different request."
            )
    else:
        await record_admin_action(
            session,
            actor=actor,
            action="wallet_adjusted",
            subject_type="wallet",
            subject_id=user_id,
            reason=body.reason,
            details={"amount_micros": body.amount_micros, "transaction_id": result.transaction.id},
        )
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
    user_id: Annotated[CleanStr, Path(min_length=1, max_length=255, pattern=r"^\S+$")],
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
