"""The rules of an adjustment: bounded, posted against the `adjustments` account once per
idempotency key, and audited the first time."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.adjustments.schemas import AdjustmentIn
from app.audit.service import OperatorPosting
from app.config import Settings
from app.errors import ValidationFailed
from app.ledger import lots
from app.ledger.service import PostResult, transfer
from app.models.ledger import LotSource

DESCRIPTION = "Balance adjustment"
ACCOUNT = "adjustments"
"""The system account adjustments move money from and to."""


async def adjust_wallet(
    session: AsyncSession,
    settings: Settings,
    *,
    actor: str,
    user_id: str,
    body: AdjustmentIn,
) -> PostResult:
    """Post the adjustment against the `adjustments` account and audit it (first time only).
    The posting, or the original one for a replay of the same key and body."""
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
    operator = OperatorPosting.of(
        actor, user_id, body, {"amount_micros": body.amount_micros, "reason": body.reason}
    )
    txn = operator.txn(f"adjustment:{body.idempotency_key}", "adjustment", DESCRIPTION)
    amount = body.amount_micros
    if amount > 0:
        # A positive adjustment is paid credit that never expires: a lot of its own.
        source = LotSource.ADJUSTMENT
        credited = await lots.credit(
            session, txn, user_id=user_id, amount_micros=amount, source=source, account=ACCOUNT
        )
        result = credited.posting
    else:
        result = await transfer(
            session, txn, user_id=user_id, amount_micros=amount, account=ACCOUNT
        )
    await operator.audit(session, result, "wallet_adjusted", {"amount_micros": body.amount_micros})
    return result
