"""The portal redeems a promo code."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.auth import CurrentUser
from app.db import SessionDep
from app.deps import NowDep
from app.errors import PromoCodeAlreadyRedeemed, PromoCodeNotFound, RateLimited
from app.ledger.schemas import CreditOut
from app.openapi import problem_responses
from app.promotions import service
from app.promotions.schemas import RedeemIn, lot_out
from app.rate_limits import rate_limited

router = APIRouter(tags=["credits"])


@router.post(
    "/promo-codes/redeem",
    summary="Redeem a promo code",
    status_code=status.HTTP_201_CREATED,
    dependencies=[rate_limited("promo_redeem")],
    responses=problem_responses(PromoCodeNotFound, PromoCodeAlreadyRedeemed, RateLimited),
)
async def redeem_promo_code(
    body: RedeemIn, user: CurrentUser, session: SessionDep, now: NowDep
) -> CreditOut:
    """Credit the caller the code's granted credit (once per user and code)."""
    lot = await service.redeem(session, now, user_id=user.user_id, code=body.code, email=user.email)
    return lot_out(lot, now)
