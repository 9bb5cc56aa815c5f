"""The portal's spend limits (the caller's own); operators' routes are `app/admin/limits.py`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import CurrentUser
from app.config import Settings
from app.db import SessionDep
from app.deps import NowDep as Now
from app.deps import SettingsDep
from app.errors import NotFound, SpendLimitSetByOperator, TooManySpendLimits
from app.limits import service
from app.limits.schemas import ApiKeyIdPath, SpendLimitIn, SpendLimitOut, spend_limit_out
from app.models.limits import ACCOUNT_SCOPE, key_scope
from app.openapi import problem_responses
from app.pagination import DescribedPageQuery, PageRequest
from app.schemas import Page

router = APIRouter(prefix="/spend-limits", tags=["spend-limits"])


KeyId = Annotated[ApiKeyIdPath, Path(description="The gateway's id of the API key.")]
GONE = problem_responses(NotFound)
_MY_SET = problem_responses(SpendLimitSetByOperator)
_MY_KEY_SET = problem_responses(SpendLimitSetByOperator, TooManySpendLimits)
_MY_GONE = problem_responses(NotFound, SpendLimitSetByOperator)


async def list_limits(
    session: AsyncSession, user_id: str, page: PageRequest, now: datetime
) -> Page[SpendLimitOut]:
    """A user's limits, each rendered with its window as of `now`."""
    rows = await service.list_limits(session, user_id, page)
    data, next_cursor = rows.render(lambda row: spend_limit_out(row, now))
    return Page[SpendLimitOut](data=data, next_cursor=next_cursor)


async def _set_mine(
    session: AsyncSession,
    user_id: str,
    scope: str,
    body: SpendLimitIn,
    now: datetime,
    settings: Settings,
) -> SpendLimitOut:
    row = await service.set_limit(
        session, user_id, scope, body, now, max_key_limits=settings.max_key_limits_per_user
    )
    return spend_limit_out(row, now)


@router.get("", summary="List my spend limits")
async def list_my_spend_limits(
    user: CurrentUser, session: SessionDep, now: Now, page: DescribedPageQuery
) -> Page[SpendLimitOut]:
    """The caller's limits (the account's first), each with what its current window spent."""
    return await list_limits(session, user.user_id, page, now)


@router.put("/account", summary="Set my account's spend limit", responses=_MY_SET)
async def set_my_account_limit(
    body: SpendLimitIn, user: CurrentUser, session: SessionDep, now: Now, settings: SettingsDep
) -> SpendLimitOut:
    """Cap what the whole account may spend per window; usage and holds beyond it get 402
    `spend_limit_exceeded`. This is the caller's own limit: an operator's limit on the account
    still applies beside it, and an own limit that the operator's already implies is a 409
    `spend_limit_set_by_operator`."""
    return await _set_mine(session, user.user_id, ACCOUNT_SCOPE, body, now, settings)


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
    return await _set_mine(session, user.user_id, key_scope(api_key_id), body, now, settings)


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
