"""Setting, removing and showing spend limits. A new limit (or one moved to another period)
starts with what its scope has already spent in the current window, recounted from the usage
records and active holds, so setting a daily limit at noon counts the morning.

Each scope holds at most one limit an operator set and one the user set; both apply. The user's
routes write and remove only the user's own, the operators' only the operator's, so a user
cannot remove, raise or stretch an operator's limit, only add a stricter one. Both sides'
changes are in the audit log."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import record_admin_action
from app.errors import NotFound, SpendLimitSetByOperator, TooManySpendLimits, ValidationFailed
from app.limits import repository
from app.limits.periods import window_start
from app.limits.repository import NewLimit
from app.limits.schemas import SpendLimitIn
from app.models.limits import KEY_SCOPE_PREFIX, SET_BY_OPERATOR, SET_BY_USER, SpendLimit
from app.money import format_amount, parse_amount
from app.pagination import PageRequest, Slice, decode_cursor, encode_cursor


def _limit_micros(body: SpendLimitIn) -> int:
    micros = parse_amount(body.limit)
    if micros <= 0:
        raise ValidationFailed(
            "The limit must be more than 0.",
            errors=[{"field": "limit", "message": "must be more than 0"}],
        )
    return micros


def _implies(operator: SpendLimit, limit_micros: int, period: str) -> bool:
    """Whether the operator's limit already keeps every `period` window within `limit_micros`
    (each such window lies inside one of the operator's, which allows no more): a user's own
    limit like that adds nothing and would only look like loosening the operator's."""
    return operator.limit_micros <= limit_micros and operator.period in _COVERING[period]


_COVERING = {
    "day": {"day", "week", "month", "total"},
    "week": {"week", "total"},
    "month": {"month", "total"},
    "total": {"total"},
}
"""The periods whose every window contains any window of the key's period."""


def _set_by_operator(operator: SpendLimit, detail: str) -> SpendLimitSetByOperator:
    return SpendLimitSetByOperator(
        detail,
        scope=operator.scope,
        limit=format_amount(operator.limit_micros),
        period=operator.period,
    )


def _split(rows: list[SpendLimit]) -> tuple[SpendLimit | None, SpendLimit | None]:
    """The operator's and the user's own limit among a scope's rows."""
    by = {row.set_by: row for row in rows}
    return by.get(SET_BY_OPERATOR), by.get(SET_BY_USER)


async def _write_limit(
    session: AsyncSession,
    user_id: str,
    scope: str,
    body: SpendLimitIn,
    now: datetime,
    *,
    operator_id: str | None,
    max_key_limits: int | None = None,
) -> SpendLimit:
    """Create or change the limit on `scope` that the operator `operator_id` (None: the user)
    sets; the other setter's limit on the scope is left alone."""
    limit_micros = _limit_micros(body)
    set_by = SET_BY_USER if operator_id is None else SET_BY_OPERATOR
    capped = max_key_limits is not None and scope.startswith(KEY_SCOPE_PREFIX)
    if capped:
        # Before any row lock: a user's key-limit writes count and insert one at a time.
        await repository.serialize_key_limit_writes(session, user_id)
    operators, own = _split(await repository.lock_limits(session, user_id, scope))
    row = operators if operator_id is not None else own
    if (
        operator_id is None
        and operators is not None
        and _implies(operators, limit_micros, body.period)
    ):
        raise _set_by_operator(
            operators,
            f"An operator's limit of {format_amount(operators.limit_micros)} USD per "
            f"{operators.period} applies to {scope!r}; your own limit on it can only be "
            "stricter.",
        )
    created = False
    if row is None:
        if capped:
            assert max_key_limits is not None
            if await repository.count_key_limits(session, user_id, set_by) >= max_key_limits:
                raise TooManySpendLimits(
                    f"You have {max_key_limits} API-key spend limits already; change or remove "
                    "one of them first.",
                    max_key_limits=max_key_limits,
                )
        new = NewLimit(user_id, scope, set_by, operator_id, limit_micros, body.period)
        created = await repository.add_limit(session, new, now)
        row = _split(await repository.lock_limits(session, user_id, scope))[
            0 if operator_id is not None else 1
        ]
        assert row is not None, "inserted now, or by the request that won the race"
    recount = created or row.period != body.period
    row.limit_micros = limit_micros
    row.period = body.period
    row.set_by_operator = operator_id
    row.updated_at = now
    if recount:
        # The limit rows first, then the wallet: the order the gateway's statements lock in.
        await repository.lock_wallet(session, user_id)
        start = window_start(body.period, now)
        row.window_start = start
        row.spent_micros = await repository.spent_since(session, user_id, scope, start)
    await session.flush()
    return row


async def set_limit(
    session: AsyncSession,
    user_id: str,
    scope: str,
    body: SpendLimitIn,
    now: datetime,
    *,
    max_key_limits: int,
) -> SpendLimit:
    """The user creates or changes their own limit on `scope` (at most `max_key_limits` on API
    keys); 409 `spend_limit_set_by_operator` when an operator's limit on the scope already
    implies it. Audited."""
    row = await _write_limit(
        session, user_id, scope, body, now, operator_id=None, max_key_limits=max_key_limits
    )
    await _audit_set(session, user_id, row)
    return row


async def remove_limit(session: AsyncSession, user_id: str, scope: str) -> None:
    """The user removes their own limit on `scope`; 409 `spend_limit_set_by_operator` when only
    an operator's is there, 404 when there is none. Audited."""
    operators, own = _split(await repository.lock_limits(session, user_id, scope))
    if own is None:
        if operators is not None:
            raise _set_by_operator(
                operators,
                f"The limit on {scope!r} was set by an operator; only an operator can remove it.",
            )
        raise NotFound(f"No spend limit on {scope!r}.")
    await repository.delete_limit(session, user_id, scope, SET_BY_USER)
    await _audit_removed(session, user_id, user_id, scope, SET_BY_USER)


async def _audit_set(session: AsyncSession, actor: str, row: SpendLimit) -> None:
    await record_admin_action(
        session,
        actor=actor,
        action="spend_limit_set",
        subject_type="spend_limit",
        # The user id alone fills the column (255); the scope goes in the details.
        subject_id=row.user_id,
        details={
            "scope": row.scope,
            "limit": format_amount(row.limit_micros),
            "period": row.period,
            "set_by": row.set_by,
        },
    )


async def _audit_removed(
    session: AsyncSession, actor: str, user_id: str, scope: str, set_by: str
) -> None:
    await record_admin_action(
        session,
        actor=actor,
        action="spend_limit_removed",
        subject_type="spend_limit",
        subject_id=user_id,
        details={"scope": scope, "set_by": set_by},
    )


async def admin_set_limit(
    session: AsyncSession, actor: str, user_id: str, scope: str, body: SpendLimitIn, now: datetime
) -> SpendLimit:
    """An operator sets the operator's limit on a user's scope (the user's own stays); audited."""
    row = await _write_limit(session, user_id, scope, body, now, operator_id=actor)
    await _audit_set(session, actor, row)
    return row


async def admin_remove_limit(session: AsyncSession, actor: str, user_id: str, scope: str) -> None:
    """An operator removes the operator's limit on a user's scope (the user's own stays); 404
    when there is none; audited."""
    if not await repository.delete_limit(session, user_id, scope, SET_BY_OPERATOR):
        raise NotFound(f"No operator's spend limit on {scope!r}.")
    await _audit_removed(session, actor, user_id, scope, SET_BY_OPERATOR)


async def list_limits(session: AsyncSession, user_id: str, page: PageRequest) -> Slice[SpendLimit]:
    """The user's limits, the account's first (an operator's before the user's own on a
    scope)."""
    after = None
    if page.cursor:
        scope, set_by = decode_cursor(page.cursor, 2)
        after = (str(scope), str(set_by))
    rows = await repository.list_limits(session, user_id, after=after, limit=page.limit + 1)
    items = rows[: page.limit]
    more = len(rows) > page.limit
    return Slice(items, encode_cursor(items[-1].scope, items[-1].set_by) if more else None)
