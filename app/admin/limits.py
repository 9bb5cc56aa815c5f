"""Operators' spend limits on any user's account or API keys (the user's own stay beside them)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.admin.params import UserId
from app.auth import AdminUser
from app.db import SessionDep
from app.deps import NowDep as Now
from app.limits import service
from app.limits.router import GONE, KeyId, list_limits
from app.limits.schemas import SpendLimitIn, SpendLimitOut, spend_limit_out
from app.models.limits import ACCOUNT_SCOPE, key_scope
from app.pagination import DescribedPageQuery
from app.schemas import Page

router = APIRouter(prefix="/admin/users/{user_id}/spend-limits", tags=["admin"])


@router.get("", summary="List a user's spend limits")
async def admin_list_spend_limits(
    user_id: UserId, admin: AdminUser, session: SessionDep, now: Now, page: DescribedPageQuery
) -> Page[SpendLimitOut]:
    """Any user's limits, each with what its current window spent."""
    return await list_limits(session, user_id, page, now)


@router.put("/account", summary="Set a user's account spend limit")
async def admin_set_account_limit(
    user_id: UserId, body: SpendLimitIn, admin: AdminUser, session: SessionDep, now: Now
) -> SpendLimitOut:
    """Set the operator's limit on any user's whole account per window; the user's own limit
    stays beside it (both apply) and the user cannot remove or change this one."""
    row = await service.admin_set_limit(session, admin.user_id, user_id, ACCOUNT_SCOPE, body, now)
    return spend_limit_out(row, now)


@router.delete(
    "/account", status_code=204, summary="Remove a user's account spend limit", responses=GONE
)
async def admin_remove_account_limit(
    user_id: UserId, admin: AdminUser, session: SessionDep
) -> Response:
    """Remove the operator's limit on any user's account (the user's own stays)."""
    await service.admin_remove_limit(session, admin.user_id, user_id, ACCOUNT_SCOPE)
    return Response(status_code=204)


@router.put("/keys/{api_key_id}", summary="Set a user's API key spend limit")
async def admin_set_key_limit(
    user_id: UserId,
    api_key_id: KeyId,
    body: SpendLimitIn,
    admin: AdminUser,
    session: SessionDep,
    now: Now,
) -> SpendLimitOut:
    """Set the operator's limit on one of any user's API keys per window; the user's own limit
    stays beside it (both apply) and the user cannot remove or change this one."""
    row = await service.admin_set_limit(
        session, admin.user_id, user_id, key_scope(api_key_id), body, now
    )
    return spend_limit_out(row, now)


@router.delete(
    "/keys/{api_key_id}",
    status_code=204,
    summary="Remove a user's API key spend limit",
    responses=GONE,
)
async def admin_remove_key_limit(
    user_id: UserId, api_key_id: KeyId, admin: AdminUser, session: SessionDep
) -> Response:
    """Remove the operator's limit on one of any user's API keys (the user's own stays)."""
    await service.admin_remove_limit(session, admin.user_id, user_id, key_scope(api_key_id))
    return Response(status_code=204)
