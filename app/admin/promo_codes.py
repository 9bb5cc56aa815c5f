"""Operators create campaign promo codes and list them with their redemption counts."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.admin.params import create_route
from app.auth import AdminUser
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import PromoCodeExists
from app.pagination import PageQuery
from app.promotions import service
from app.promotions.schemas import PromoCodeIn, PromoCodeOut, promo_code_out
from app.schemas import Page

router = APIRouter(prefix="/admin", tags=["admin"])


@create_route(
    router,
    "/promo-codes",
    "Create a promo code",
    PromoCodeOut,
    "The same code with the same terms exists.",
    PromoCodeExists,
)
async def create_promo_code(
    response: Response,
    body: PromoCodeIn,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
) -> PromoCodeOut:
    """A code each user may redeem once for granted credit; audited."""
    code, created = await service.create_promo_code(
        session, settings, actor=admin.user_id, body=body
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return promo_code_out(code)


@router.get("/promo-codes", summary="List promo codes")
async def list_promo_codes(
    admin: AdminUser, session: SessionDep, page: PageQuery
) -> Page[PromoCodeOut]:
    """Promo codes with their redemption counts, newest first."""
    codes = await service.list_promo_codes(session, page)
    data, next_cursor = codes.render(promo_code_out)
    return Page[PromoCodeOut](data=data, next_cursor=next_cursor)
