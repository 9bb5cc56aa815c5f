"""Spend limits from the portal (the caller's own) and for operators (any user's)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import AdminUser, CurrentUser
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import NotFound, SpendLimitSetByOperator, TooManySpendLimits
from app.limits import service
from app.limits.schemas import ApiKeyIdPath, SpendLimitIn, SpendLimitOut
from app.models.limits import ACCOUNT_SCOPE, key_scope
from app.openapi import problem_responses
from app.pagination import DescribedPageQuery, PageRequest
from app.schemas import CleanToken, Page

router = APIRouter(prefix="/spend-limits", tags=["spend-limits"])
admin_router = APIRouter(prefix="/admin/users/{user_id}/spend-limits", tags=["admin"])


def _now(request: Request) -> datetime:
    clock: Callable[[], datetime] = request.app.state.clock
    return clock()


Now = Annotated[datetime, Depends(_now)]
"""The app's clock (`app.state.clock`), which the gateway's windows read too."""
KeyId = Annotated[ApiKeyIdPath, Path(description="The gateway's id of the API key.")]
UserId = Annotated[CleanToken, Path(min_length=1, max_length=255)]
_GONE = problem_responses(NotFound)
_MY_SET = problem_responses(SpendLimitSetByOperator)
_MY_KEY_SET = problem_responses(SpendLimitSetByOperator, TooManySpendLimits)
_MY_GONE = problem_responses(NotFound, SpendLimitSetByOperator)


async def _list_limits(
    session: AsyncSession, user_id: str, page: PageRequest, now: datetime
) -> Page[SpendLimitOut]:
    return await service.list_limits(
        session, user_id, cursor=page.cursor, limit=page.limit, now=now
    )


@router.get("", summary="List my spend limits")
async def list_my_spend_limits(
    user: CurrentUser, session: SessionDep, now: Now, page: DescribedPageQuery
) -> Page[SpendLimitOut]:
    """The caller's limits (the account's first), each with what its current window spent."""
    return await _list_limits(session, user.user_id, page, now)


@router.put("/account", summary="Set my account's spend limit", responses=_MY_SET)
async def set_my_account_limit(
    body: SpendLimitIn, user: CurrentUser, session: SessionDep, now: Now, settings: SettingsDep
) -> SpendLimitOut:
    """Cap what the whole account may spend per window; usage and holds beyond it get 402
    `spend_limit_exceeded`. This is the caller's own limit: an operator's limit on the account
    still applies beside it, and an own limit that the operator's already implies is a 409
    `spend_limit_set_by_operator`."""
    return await service.set_limit(
        session,
        user.user_id,
        ACCOUNT_SCOPE,
        body,
        now,
        max_key_limits=settings.max_key_limits_per_user,
    )


@router.delete(
    "/account", status_code=204, summary="Remove my account's spend limit", responses=_MY_GONE
)
async def remove_my_account_limit(user: CurrentUser, session: SessionDep) -> Response:
    """Remove the caller's own account limit; an operator's limit stays (removing only that is
    a 409 `spend_limit_set_by_operator`)."""
    await service.remove_limit(session, user.user_id, ACCOUNT_SCOPE)
    return Response(status_code=204)


@router.put("/keys/{api_key_id}", summary="Set an API key's spend limit", responses=_MY_KEY_SET)
async def set_my_key_limit(
    api_key_id: KeyId,
    body: SpendLimitIn,
    user: CurrentUser,
    session: SessionDep,
    now: Now,
    settings: SettingsDep,
) -> SpendLimitOut:
    """Cap what one of the caller's API keys may spend per window (the account's limit still
    applies). The caller's own limit: an operator's on the key still applies beside it (409
    `spend_limit_set_by_operator` for one the operator's already implies). A new one past
    `BILLING_MAX_KEY_LIMITS_PER_USER` key limits is a 409 `too_many_spend_limits`."""
    return await service.set_limit(
        session,
        user.user_id,
        key_scope(api_key_id),
        body,
        now,
        max_key_limits=settings.max_key_limits_per_user,
    )


@router.delete(
    "/keys/{api_key_id}",
    status_code=204,
    summary="Remove an API key's spend limit",
    responses=_MY_GONE,
)
async def remove_my_key_limit(
    api_key_id: KeyId, user: CurrentUser, session: SessionDep
) -> Response:
    """Remove the caller's own limit on one API key; an operator's limit stays (removing only
    that is a 409 `spend_limit_set_by_operator`)."""
    await service.remove_limit(session, user.user_id, key_scope(api_key_id))
    return Response(status_code=204)


@admin_router.get("", summary="List a user's spend limits")
async def admin_list_spend_limits(
    user_id: UserId, admin: AdminUser, session: SessionDep, now: Now, page: DescribedPageQuery
) -> Page[SpendLimitOut]:
    """Any user's limits, each with what its current window spent."""
    return await _list_limits(session, user_id, page, now)


@admin_router.put("/account", summary="Set a user's account spend limit")
async def admin_set_account_limit(
    user_id: UserId, body: SpendLimitIn, admin: AdminUser, session: SessionDep, now: Now
) -> SpendLimitOut:
    """Set the operator's limit on any user's whole account per window; the user's own limit
    stays beside it (both apply) and the user cannot remove or change this one."""
    return await service.admin_set_limit(session, admin.user_id, user_id, ACCOUNT_SCOPE, body, now)


@admin_router.delete(
    "/account", status_code=204, summary="Remove a user's account spend limit", responses=_GONE
)
async def admin_remove_account_limit(
    user_id: UserId, admin: AdminUser, session: SessionDep
) -> Response:
    """Remove the operator's limit on any user's account (the user's own stays)."""
    await service.admin_remove_limit(session, admin.user_id, user_id, ACCOUNT_SCOPE)
    return Response(status_code=204)


@admin_router.put("/keys/{api_key_id}", summary="Set a user's API key spend limit")
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
    return await service.admin_set_limit(
        session, admin.user_id, user_id, key_scope(api_key_id), body, now
    )


@admin_router.delete(
    "/keys/{api_key_id}",
    status_code=204,
    summary="Remove a user's API key spend limit",
    responses=_GONE,
)
async def admin_remove_key_limit(
    user_id: UserId, api_key_id: KeyId, admin: AdminUser, session: SessionDep
) -> Response:
    """Remove the operator's limit on one of any user's API keys (the user's own stays)."""
    await service.admin_remove_limit(session, admin.user_id, user_id, key_scope(api_key_id))
    return Response(status_code=204)
