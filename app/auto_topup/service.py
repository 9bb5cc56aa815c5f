"""Auto top-up settings: reading them, replacing them (the only way to enable it or lift a
pause), and pausing them when their card goes away. The decision rules are in `rules.py`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.auto_topup import repository, rules, state
from app.auto_topup.schemas import AutoTopupIn
from app.config import Settings
from app.errors import ValidationFailed
from app.ledger.repository import refresh_watch
from app.models.base import utcnow
from app.models.payment_methods import AutoTopupSettings
from app.money import format_amount, parse_amount, usd_to_micros
from app.notifications import events
from app.notifications.service import enqueue
from app.payment_methods import repository as cards


@dataclass(frozen=True, slots=True)
class AutoTopupState:
    """A user's auto top-up setting (None: never set) and what it charged this month."""

    settings: AutoTopupSettings | None
    spent_this_month_micros: int


async def get_auto_topup(
    session: AsyncSession, user_id: str, *, now: datetime | None = None
) -> AutoTopupState:
    """The caller's setting and state (disabled, with nulls, when never set)."""
    now = now or utcnow()
    row = await repository.get_settings(session, user_id)
    spent = await repository.spent_since(session, user_id, rules.month_start(now))
    return AutoTopupState(row, spent)


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", errors=[{"field": field, "message": message}])


async def put_auto_topup(
    session: AsyncSession, settings: Settings, user_id: str, body: AutoTopupIn
) -> AutoTopupState:
    """Replace the caller's setting. `enabled: true` makes it active (lifting a pause and
    forgetting earlier soft declines); `enabled: false` disables it. Nothing else ever
    enables it."""
    threshold = parse_amount(body.threshold)
    amount = parse_amount(body.amount)
    monthly_limit = parse_amount(body.monthly_limit)
    low, high = usd_to_micros(settings.topup_min), usd_to_micros(settings.topup_max)
    if not low <= amount <= high:
        raise _invalid("amount", f"must be between {format_amount(low)} and {format_amount(high)}")
    if monthly_limit < amount:
        raise _invalid("monthly_limit", "must be at least the amount")
    if body.payment_method_id is None:
        if body.enabled:
            raise _invalid("payment_method_id", "a saved card is required to enable it")
    elif await cards.get_active_of_user(session, user_id, body.payment_method_id) is None:
        raise _invalid("payment_method_id", "not one of your saved cards")

    now = utcnow()
    row = await repository.get_settings(session, user_id, for_update=True)
    if row is None:
        row = AutoTopupSettings(user_id=user_id, created_at=now, soft_declines=0)
        session.add(row)
    row.threshold_micros = threshold
    row.amount_micros = amount
    row.monthly_limit_micros = monthly_limit
    row.payment_method_id = body.payment_method_id
    row.updated_at = now
    if body.enabled:
        state.enable(row)
    else:
        state.disable(row)
    await session.flush()
    await refresh_watch(session, user_id)
    spent = await repository.spent_since(session, user_id, rules.month_start(now))
    return AutoTopupState(row, spent)


async def pause(
    session: AsyncSession,
    user_id: str,
    reason: rules.PausedReason,
    *,
    pay_url: str | None = None,
    action_payment_intent_id: str | None = None,
) -> bool:
    """Pause an active auto top-up (in the caller's transaction) and notify the user
    (`auto_topup.paused`). False when it was not active (nothing changes)."""
    row = await repository.get_settings(session, user_id, for_update=True)
    if row is None or not state.pause(
        row, reason, action_payment_intent_id=action_payment_intent_id, now=utcnow()
    ):
        return False
    await enqueue(
        session,
        user_id=user_id,
        type="auto_topup.paused",
        data=events.auto_topup_paused(
            reason=reason, payment_method_id=row.payment_method_id, pay_url=pay_url
        ),
    )
    return True


async def pause_for_removed_card(
    session: AsyncSession, user_id: str, payment_method_id: str
) -> bool:
    """The card was removed: pause the auto top-up that charges it."""
    row = await repository.get_settings(session, user_id)
    if row is None or row.payment_method_id != payment_method_id:
        return False
    return await pause(session, user_id, "payment_method_removed")
