"""Operators grant credit to a user: a granted lot, with a reason, once per idempotency key."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.admin.params import UserId, create_route
from app.auth import AdminUser
from app.db import SessionDep
from app.deps import NowDep, SettingsDep
from app.errors import IdempotencyConflict
from app.promotions import service
from app.promotions.schemas import GrantIn, GrantOut, grant_out

router = APIRouter(prefix="/admin", tags=["admin"])


@create_route(
    router,
    "/users/{user_id}/grants",
    "Grant credit to a user",
    GrantOut,
    "A replay of an earlier grant with the same key and body.",
    IdempotencyConflict,
)
async def create_grant(
    response: Response,
    user_id: UserId,
    body: GrantIn,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> GrantOut:
    """Credit granted (promotional) credit that expires as given; audited."""
    credited = await service.grant_credit(
        session, settings, now, actor=admin.user_id, user_id=user_id, body=body
    )
    if credited.replayed:
        response.status_code = status.HTTP_200_OK
    return grant_out(credited, user_id, now)
