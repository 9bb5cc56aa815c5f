"""All SQL of the spend limits through the ORM: the portal's reads and writes, and the counters
as the hold-expiry job moves them. (The gateway's statements carry their own, in
`app.usage.repository`.)

Lock order, as everywhere: a user's limit rows (in scope, set_by order) before their wallet row;
a job touching several users takes every limit row first (in user, scope, set_by order), then the
wallets. A scope may carry two rows (an operator's and the user's); both apply.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import new_id
from app.limits.periods import EPOCH, window_start
from app.models.ledger import Account, Hold
from app.models.limits import ACCOUNT_SCOPE, KEY_SCOPE_PREFIX, SpendLimit
from app.models.usage import UsageRecord

_COUNTER_COLUMNS = (
    SpendLimit.id,
    SpendLimit.scope,
    SpendLimit.period,
    SpendLimit.limit_micros,
    SpendLimit.window_start,
    SpendLimit.spent_micros,
)


# The portal.


async def list_limits(
    session: AsyncSession, user_id: str, *, after: tuple[str, str] | None, limit: int
) -> list[SpendLimit]:
    """The user's limits in (scope, set_by) order (the account's first, an operator's before
    the user's own)."""
    stmt = (
        select(SpendLimit)
        .where(SpendLimit.user_id == user_id)
        .order_by(SpendLimit.scope, SpendLimit.set_by)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(tuple_(SpendLimit.scope, SpendLimit.set_by) > after)
    return list((await session.execute(stmt)).scalars().all())


async def lock_limits(session: AsyncSession, user_id: str, scope: str) -> list[SpendLimit]:
    """The user's limits on `scope` (an operator's, the user's own), locked, in set_by order."""
    return list(
        (
            await session.execute(
                select(SpendLimit)
                .where(SpendLimit.user_id == user_id, SpendLimit.scope == scope)
                .order_by(SpendLimit.set_by)
                .with_for_update()
            )
        )
        .scalars()
        .all()
    )


async def serialize_key_limit_writes(session: AsyncSession, user_id: str) -> None:
    """Make the user's concurrent key-limit writes wait for each other (so a count followed by
    an insert is one step): a transaction-scoped advisory lock, taken before any row lock (no
    gateway statement takes it, so it closes no cycle)."""
    await session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(f"key_limits:{user_id}", 0)))
    )


async def count_key_limits(session: AsyncSession, user_id: str, set_by: str) -> int:
    """How many API-key limits of the user `set_by` wrote."""
    return (
        await session.execute(
            select(func.count()).where(
                SpendLimit.user_id == user_id,
                SpendLimit.set_by == set_by,
                SpendLimit.scope.like(f"{KEY_SCOPE_PREFIX}%"),
            )
        )
    ).scalar_one()


class NewLimit(NamedTuple):
    """A limit to insert: who sets how much on which scope, per which period."""

    user_id: str
    scope: str
    set_by: str
    set_by_operator: str | None
    limit_micros: int
    period: str


async def add_limit(session: AsyncSession, new: NewLimit, now: datetime) -> bool:
    """Insert a limit with an empty counter (the caller fills it from what was spent); False
    when a concurrent request inserted it first (the caller then changes that one)."""
    stmt = (
        postgresql.insert(SpendLimit)
        .values(
            **new._asdict(),
            id=new_id("lim"),
            window_start=window_start(new.period, now),
            spent_micros=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["user_id", "scope", "set_by"])
        .returning(SpendLimit.id)
    )
    return (await session.execute(stmt)).first() is not None


async def lock_wallet(session: AsyncSession, user_id: str) -> None:
    """Lock the user's wallet (after their limit rows), so no debit moves while a counter is
    recounted from what was spent."""
    await session.execute(select(Account.id).where(Account.user_id == user_id).with_for_update())


async def spent_since(session: AsyncSession, user_id: str, scope: str, start: datetime) -> int:
    """What `scope` spent from `start` on: usage recorded since, plus active holds reserved
    since. A hold reserved before `start` and captured after counts in its capture's window
    here (the live counters count it in its reservation's)."""
    records = select(func.coalesce(func.sum(UsageRecord.amount_micros), 0)).where(
        UsageRecord.user_id == user_id
    )
    holds = select(func.coalesce(func.sum(Hold.amount_micros), 0)).where(
        Hold.user_id == user_id, Hold.status == "active"
    )
    if start != EPOCH:
        records = records.where(UsageRecord.created_at >= start)
        holds = holds.where(Hold.created_at >= start)
    if scope != ACCOUNT_SCOPE:
        api_key_id = scope.removeprefix("key:")
        records = records.where(UsageRecord.api_key_id == api_key_id)
        holds = holds.where(Hold.api_key_id == api_key_id)
    used = (await session.execute(records)).scalar_one()
    held = (await session.execute(holds)).scalar_one()
    return int(used) + int(held)


async def delete_limit(session: AsyncSession, user_id: str, scope: str, set_by: str) -> bool:
    """Remove the user's limit on `scope` that `set_by` set; False when there is none."""
    result = await session.execute(
        delete(SpendLimit)
        .where(
            SpendLimit.user_id == user_id, SpendLimit.scope == scope, SpendLimit.set_by == set_by
        )
        .returning(SpendLimit.id)
    )
    return result.first() is not None
