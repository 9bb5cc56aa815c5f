"""Setting, removing and showing spend limits. A new limit (or one moved to another period)
starts with what its scope has already spent in the current window, recounted from the usage
records and active holds, so setting a daily limit at noon counts the morning."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import record_admin_action
from app.errors import NotFound, ValidationFailed
from app.limits import repository
from app.limits.periods import window_end, window_start
from app.limits.schemas import Period, SpendLimitIn, SpendLimitOut
from app.models.limits import SpendLimit
from app.money import format_amount, format_balance, parse_amount
from app.pagination import decode_cursor, encode_cursor
from app.schemas import Page


def _limit_micros(body: SpendLimitIn) -> int:
    micros = parse_amount(body.limit)
    if micros <= 0:
        raise ValidationFailed(
            "The limit must be more than 0.",
            errors=[{"field": "limit", "message": "must be more than 0"}],
        )
    return micros


def _out(row: SpendLimit, now: datetime) -> SpendLimitOut:
    current = window_start(row.period, now)
    spent = row.spent_micros if row.window_start >= current else 0
    return SpendLimitOut(
        scope=row.scope,
        limit=format_amount(row.limit_micros),
        period=cast(Period, row.period),
        spent=format_balance(spent),
        remaining=format_balance(max(0, row.limit_micros - spent)),
        resets_at=window_end(row.period, now),
    )


async def set_limit(
    session: AsyncSession, user_id: str, scope: str, body: SpendLimitIn, now: datetime
) -> SpendLimitOut:
    """Create or change the user's limit on `scope`."""
    limit_micros = _limit_micros(body)
    row = await repository.lock_limit(session, user_id, scope)
    created = False
    if row is None:
        created = await repository.add_limit(
            session,
            user_id=user_id,
            scope=scope,
            limit_micros=limit_micros,
            period=body.period,
            now=now,
        )
        row = await repository.lock_limit(session, user_id, scope)
        assert row is not None, "inserted now, or by the request that won the race"
    recount = created or row.period != body.period
    row.limit_micros = limit_micros
    row.period = body.period
    row.updated_at = now
    if recount:
        # The limit row first, then the wallet: the order the gateway's statements lock in.
        await repository.lock_wallet(session, user_id)
        start = window_start(body.period, now)
        row.window_start = start
        row.spent_micros = await repository.spent_since(session, user_id, scope, start)
    await session.flush()
    return _out(row, now)


async def remove_limit(session: AsyncSession, user_id: str, scope: str) -> None:
    """Remove the user's limit on `scope`; 404 when there is none."""
    if not await repository.delete_limit(session, user_id, scope):
        raise NotFound(f"No spend limit on {scope!r}.")


async def admin_set_limit(
    session: AsyncSession, actor: str, user_id: str, scope: str, body: SpendLimitIn, now: datetime
) -> SpendLimitOut:
    """An operator sets a user's limit; audited."""
    out = await set_limit(session, user_id, scope, body, now)
    await record_admin_action(
        session,
        actor=actor,
        action="spend_limit_set",
        subject_type="spend_limit",
        # The user id alone fills the column (255); the scope goes in the details.
        subject_id=user_id,
        details={"scope": scope, "limit": out.limit, "period": out.period},
    )
    return out


async def admin_remove_limit(session: AsyncSession, actor: str, user_id: str, scope: str) -> None:
    """An operator removes a user's limit; audited."""
    await remove_limit(session, user_id, scope)
    await record_admin_action(
        session,
        actor=actor,
        action="spend_limit_removed",
        subject_type="spend_limit",
        subject_id=user_id,
        details={"scope": scope},
    )


async def list_limits(
    session: AsyncSession, user_id: str, *, cursor: str | None, limit: int, now: datetime
) -> Page[SpendLimitOut]:
    """The user's limits, the account's first, each with its current window."""
    after = str(decode_cursor(cursor, 1)[0]) if cursor else None
    rows = await repository.list_limits(session, user_id, after_scope=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        data=[_out(row, now) for row in rows],
        next_cursor=encode_cursor(rows[-1].scope) if more else None,
    )
