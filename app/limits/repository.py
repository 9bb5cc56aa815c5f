"""All SQL of the spend limits through the ORM: the portal's reads and writes, and the counters
as the embedded SQLite store and the hold-expiry job move them. (The gateway's statements on
PostgreSQL carry their own, in `app.usage.repository`.)

Lock order, as everywhere: a user's limit rows (in scope, set_by order) before their wallet row;
a job touching several users takes every limit row first (in user, scope, set_by order), then the
wallets. A scope may carry two rows (an operator's and the user's); both apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import new_id
from app.limits.periods import EPOCH, Windows, window_start
from app.limits.rules import Counter, scopes
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


async def locked_counters(
    session: AsyncSession, user_id: str, api_key_id: str | None
) -> list[Counter]:
    """The limits a request of this user and key is subject to (the operator's and the user's
    own), locked, in (scope, set_by) order."""
    stmt = (
        select(*_COUNTER_COLUMNS)
        .where(SpendLimit.user_id == user_id, SpendLimit.scope.in_(scopes(api_key_id)))
        .order_by(SpendLimit.scope, SpendLimit.set_by)
        .with_for_update()
    )
    return [Counter(*row) for row in (await session.execute(stmt)).all()]


async def charge(
    session: AsyncSession, counters: Sequence[Counter], amount_micros: int, windows: Windows
) -> list[int]:
    """Add `amount_micros` to each counter's current window (starting it over when it counted
    an earlier one); what each limit leaves after it."""
    remaining = []
    for counter in counters:
        start, spent = counter.current(windows)
        await session.execute(
            update(SpendLimit)
            .where(SpendLimit.id == counter.id)
            .values(window_start=start, spent_micros=spent + amount_micros)
        )
        remaining.append(counter.limit_micros - spent - amount_micros)
    return remaining


async def settle_hold(
    session: AsyncSession,
    counters: Sequence[Counter],
    reserved_at: datetime,
    delta_micros: int,
    windows: Windows,
) -> list[int]:
    """A hold reserved at `reserved_at` was resolved: add `delta_micros` (captured - reserved,
    or -reserved) in the window it was reserved in, on each counter still counting that window.
    What each limit leaves in the current window."""
    remaining = []
    for counter in counters:
        spent = counter.spent_micros
        if counter.window_start == window_start(counter.period, reserved_at):
            spent += delta_micros
            await session.execute(
                update(SpendLimit)
                .where(SpendLimit.id == counter.id)
                .values(spent_micros=SpendLimit.spent_micros + delta_micros)
            )
        current = windows.start(counter.period)
        remaining.append(counter.limit_micros - (spent if counter.window_start >= current else 0))
    return remaining


async def give_back_expired(
    session: AsyncSession, expired: Iterable[tuple[str, str, int, datetime]]
) -> None:
    """Expired holds (id, user id, amount, reserved at) give their amounts back to the windows
    they were reserved in. Limit rows are locked in (user, scope) order, before any wallet."""
    expired = list(expired)
    if not expired:
        return
    keys = dict(
        (
            await session.execute(
                select(Hold.id, Hold.api_key_id).where(Hold.id.in_([h[0] for h in expired]))
            )
        ).all()
    )
    wanted = {
        (user_id, scope) for hold_id, user_id, _, _ in expired for scope in scopes(keys[hold_id])
    }
    rows = (
        await session.execute(
            select(SpendLimit.user_id, *_COUNTER_COLUMNS)
            .where(tuple_(SpendLimit.user_id, SpendLimit.scope).in_(sorted(wanted)))
            .order_by(SpendLimit.user_id, SpendLimit.scope, SpendLimit.set_by)
            .with_for_update()
        )
    ).all()
    counters: dict[tuple[str, str], list[Counter]] = {}
    for row in rows:
        counters.setdefault((row[0], row[2]), []).append(Counter(*row[1:]))
    for hold_id, user_id, amount, reserved_at in expired:
        for scope in scopes(keys[hold_id]):
            for counter in counters.get((user_id, scope), ()):
                if counter.window_start != window_start(counter.period, reserved_at):
                    continue
                await session.execute(
                    update(SpendLimit)
                    .where(SpendLimit.id == counter.id)
                    .values(spent_micros=SpendLimit.spent_micros - amount)
                )


async def set_hold_key(session: AsyncSession, hold_id: str, api_key_id: str) -> None:
    """Record which API key a hold is for."""
    await session.execute(update(Hold).where(Hold.id == hold_id).values(api_key_id=api_key_id))


async def hold_key(session: AsyncSession, hold_id: str) -> str | None:
    """The API key a hold is for."""
    return (
        await session.execute(select(Hold.api_key_id).where(Hold.id == hold_id))
    ).scalar_one_or_none()


async def insert_usage_record(
    session: AsyncSession,
    *,
    user_id: str,
    transaction_id: str,
    request_id: str,
    api_key_id: str | None,
    model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    amount_micros: int,
    balance_after_micros: int,
    now: datetime,
) -> None:
    """The usage record of a debit or a capture, written in its transaction."""
    await session.execute(
        insert(UsageRecord).values(
            user_id=user_id,
            transaction_id=transaction_id,
            request_id=request_id,
            api_key_id=api_key_id,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            amount_micros=amount_micros,
            balance_after_micros=balance_after_micros,
            created_at=now,
        )
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
    an insert is one step): a transaction-scoped advisory lock on PostgreSQL, taken before any
    row lock (no gateway statement takes it, so it closes no cycle); SQLite's `BEGIN
    IMMEDIATE` already runs one writer at a time."""
    if session.get_bind().dialect.name == "postgresql":
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


async def add_limit(
    session: AsyncSession,
    *,
    user_id: str,
    scope: str,
    set_by: str,
    set_by_operator: str | None,
    limit_micros: int,
    period: str,
    now: datetime,
) -> bool:
    """Insert a limit with an empty counter (the caller fills it from what was spent); False
    when a concurrent request inserted it first (the caller then changes that one)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(SpendLimit)
        .values(
            id=new_id("lim"),
            user_id=user_id,
            scope=scope,
            set_by=set_by,
            set_by_operator=set_by_operator,
            limit_micros=limit_micros,
            period=period,
            window_start=window_start(period, now),
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
