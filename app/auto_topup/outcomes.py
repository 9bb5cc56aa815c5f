"""What an attempt's end does, under the rules of `rules.py`: the attempt row, the settings'
state (backoff, pause) and the user's notifications, all in the caller's transaction. The
charging job (issue 12's integration) calls these after the Stripe call, with no transaction
open during it; a Stripe outage or timeout is none of these (the attempt stays `processing`
and is retried with the same idempotency key)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.auto_topup import repository, rules, service, state
from app.ids import new_id
from app.models.payment_methods import AttemptStatus, AutoTopup, AutoTopupSettings, AutoTopupStatus
from app.notifications import events
from app.notifications.service import enqueue


async def _attempt(session: AsyncSession, attempt_id: str) -> AutoTopup:
    row = await repository.get_attempt(session, attempt_id, for_update=True)
    if row is None:
        raise LookupError(f"no auto top-up attempt {attempt_id}")
    return row


async def _notify_failed(
    session: AsyncSession,
    attempt: AutoTopup,
    *,
    code: str | None,
    decline_code: str | None,
    next_attempt_at: datetime | None,
) -> None:
    """Tell the user the attempt failed (`auto_topup.failed`)."""
    failed = events.auto_topup_failed(
        auto_topup_id=attempt.id,
        order_id=attempt.order_id,
        amount_micros=attempt.amount_micros,
        code=code,
        decline_code=decline_code,
        next_attempt_at=next_attempt_at,
    )
    await enqueue(session, user_id=attempt.user_id, type="auto_topup.failed", data=failed)


async def apply_success(
    session: AsyncSession,
    attempt_id: str,
    *,
    order_id: str,
    receipt_url: str | None,
    now: datetime,
) -> None:
    """The charge succeeded (and its order was credited in this transaction)."""
    attempt = await _attempt(session, attempt_id)
    if not state.end_attempt(attempt, AttemptStatus.SUCCEEDED, now=now):
        return
    attempt.order_id = order_id
    settings = await repository.get_settings(session, attempt.user_id, for_update=True)
    if settings is not None:
        settings.soft_declines = 0
        settings.next_attempt_at = None
    succeeded = events.auto_topup_succeeded(
        auto_topup_id=attempt.id,
        order_id=order_id,
        amount_micros=attempt.amount_micros,
        receipt_url=receipt_url,
    )
    await enqueue(session, user_id=attempt.user_id, type="auto_topup.succeeded", data=succeeded)


async def apply_decline(
    session: AsyncSession,
    attempt_id: str,
    *,
    stripe_code: str | None,
    decline_code: str | None,
    payment_intent_id: str | None,
    pay_url: str | None,
    now: datetime,
) -> rules.AfterDecline:
    """The card was declined: the attempt fails; a hard decline (or the last soft one) pauses
    auto top-up with a link to pay on-session; an earlier soft decline schedules ONE retry
    attempt after the backoff (it holds the in-flight slot, so debits meanwhile record none).
    An attempt no longer being charged (answered already) is left as it is: no pause, no
    retry, no notification."""
    attempt = await _attempt(session, attempt_id)
    if not state.end_attempt(attempt, AttemptStatus.FAILED, now=now):
        # Answered already (a lapsed lease, repeated by another run): nothing changes.
        return rules.AfterDecline(None, 0, None)
    attempt.failure_code = stripe_code
    attempt.decline_code = decline_code
    attempt.payment_intent_id = payment_intent_id or attempt.payment_intent_id
    settings = await repository.get_settings(session, attempt.user_id, for_update=True)
    decision = rules.after_decline(
        stripe_code=stripe_code,
        decline_code=decline_code,
        soft_declines=settings.soft_declines if settings is not None else 0,
        now=now,
    )
    await _notify_failed(
        session,
        attempt,
        code=stripe_code,
        decline_code=decline_code,
        next_attempt_at=decision.next_attempt_at,
    )
    if settings is None or settings.status != AutoTopupStatus.ACTIVE:
        return decision
    settings.soft_declines = decision.soft_declines
    settings.last_attempt_at = max(settings.last_attempt_at or now, now)
    if decision.paused_reason is not None:
        await service.pause(
            session,
            attempt.user_id,
            decision.paused_reason,
            pay_url=pay_url if decision.paused_reason == "authentication_required" else None,
            action_payment_intent_id=payment_intent_id,
        )
        return decision
    settings.next_attempt_at = decision.next_attempt_at
    await session.flush()
    await repository.insert_pending_attempt(
        session,
        attempt_id=new_id("atu"),
        user_id=attempt.user_id,
        amount_micros=settings.amount_micros,
        payment_method_id=attempt.payment_method_id,
        trigger_reference=f"retry:{attempt.id}",
        now=now,
    )
    return decision


async def skip_over_monthly_limit(session: AsyncSession, attempt_id: str, *, now: datetime) -> bool:
    """Before charging: skip the attempt (and tell the user) when it would take the month's
    auto top-ups over the limit. True when it was skipped."""
    attempt = await _attempt(session, attempt_id)
    settings = await repository.get_settings(session, attempt.user_id)
    if settings is None:
        return False
    spent = await repository.spent_since(session, attempt.user_id, rules.month_start(now))
    if rules.within_monthly_limit(
        spent_this_month_micros=spent,
        amount_micros=attempt.amount_micros,
        monthly_limit_micros=settings.monthly_limit_micros,
    ):
        return False
    if not state.end_attempt(attempt, AttemptStatus.SKIPPED, now=now, failure_code="monthly_limit"):
        return False
    skipped = events.auto_topup_skipped(
        amount_micros=attempt.amount_micros,
        monthly_limit_micros=settings.monthly_limit_micros,
        spent_this_month_micros=spent,
    )
    await enqueue(session, user_id=attempt.user_id, type="auto_topup.skipped", data=skipped)
    return True


async def cancel(session: AsyncSession, attempt: AutoTopup, *, reason: str, now: datetime) -> None:
    """The attempt will not be charged (auto top-up no longer active, the balance recovered,
    the card is gone): it leaves the in-flight slot."""
    state.end_attempt(attempt, AttemptStatus.CANCELED, now=now, failure_code=reason)


async def start_charge(
    session: AsyncSession,
    attempt: AutoTopup,
    settings: AutoTopupSettings,
    *,
    order_id: str,
    lease_until: datetime,
    now: datetime,
) -> None:
    """The attempt is being charged as `order_id` (committed before the Stripe call): it counts
    as the user's last attempt for the 10-minute spacing from now on."""
    if state.start_attempt(attempt, order_id=order_id, lease_until=lease_until):
        settings.last_attempt_at = now


def extend_lease(attempt: AutoTopup, lease_until: datetime) -> None:
    """A run repeats a processing attempt's call: its claim moves on."""
    attempt.lease_until = lease_until


async def fail_refused(
    session: AsyncSession,
    attempt_id: str,
    *,
    stripe_code: str | None,
    paused_reason: rules.PausedReason,
    now: datetime,
) -> None:
    """Stripe refused the charge without declining the card (a card detached at Stripe, a
    request it will never accept): the attempt fails and auto top-up pauses, so it cannot loop."""
    attempt = await _attempt(session, attempt_id)
    failure_code = stripe_code or "refused"
    if not state.end_attempt(attempt, AttemptStatus.FAILED, now=now, failure_code=failure_code):
        return
    await _notify_failed(
        session, attempt, code=stripe_code, decline_code=None, next_attempt_at=None
    )
    await service.pause(session, attempt.user_id, paused_reason)
