"""The trigger (one pending attempt per crossing, whatever the concurrency) and what an
attempt's end does (`outcomes`)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auto_topup import outcomes, repository, state
from app.auto_topup.rules import MIN_ATTEMPT_SPACING
from app.db import session_scope
from app.ids import new_id
from app.ledger.repository import refresh_watch
from app.models.base import utcnow
from app.models.notifications import Notification
from app.models.payment_methods import AutoTopup, AutoTopupSettings
from testing.factories import gateway_debit, paid_order
from testing.helpers.auto_topup import auto_topup_settings, notification_types

USD = 1_000_000


async def _enable(
    maker: async_sessionmaker[AsyncSession],
    user_id: str = "user-1",
    *,
    threshold: int = 5 * USD,
    amount: int = 20 * USD,
    monthly_limit: int = 100 * USD,
    status: str = "active",
) -> None:
    async with session_scope(maker) as session:
        session.add(
            AutoTopupSettings(
                user_id=user_id,
                status=status,
                paused_reason="card_declined" if status == "paused" else None,
                threshold_micros=threshold,
                amount_micros=amount,
                monthly_limit_micros=monthly_limit,
                payment_method_id="pm_saved",
            )
        )
        await session.flush()
        # What `PUT /v1/auto-topup` does after saving: the wallet's watch (postings look the
        # trigger up only below it).
        await refresh_watch(session, user_id)


async def _debit(
    maker: async_sessionmaker[AsyncSession], user_id: str, amount_micros: int
) -> str | None:
    async with session_scope(maker) as session:
        request_id = new_id("req")
        reference = f"usage:{request_id}"
        # The debit's statement runs the trigger in its transaction.
        await gateway_debit(session, user_id, amount_micros, request_id=request_id)
        recorded = await session.scalar(
            select(AutoTopup.id).where(AutoTopup.trigger_reference == reference)
        )
        return recorded


async def _attempts(maker: async_sessionmaker[AsyncSession], user_id: str = "user-1") -> list[Any]:
    async with session_scope(maker) as session:
        rows = await session.scalars(
            select(AutoTopup).where(AutoTopup.user_id == user_id).order_by(AutoTopup.created_at)
        )
        return list(rows)


async def test_a_crossing_records_one_pending_attempt_and_nothing_more_while_in_flight(
    app: Any, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    await paid_order(session_maker, amount_micros=10 * USD)
    await _enable(session_maker)
    assert await _debit(session_maker, "user-1", 4 * USD) is None  # 6.00
    recorded = await _debit(session_maker, "user-1", 2 * USD)  # 4.00: crossed
    assert recorded is not None
    assert await _debit(session_maker, "user-1", 1 * USD) is None  # already below
    [attempt] = await _attempts(session_maker)
    assert (attempt.id, attempt.status, attempt.amount_micros) == (recorded, "pending", 20 * USD)
    assert attempt.payment_method_id == "pm_saved"
    assert attempt.trigger_reference.startswith("usage:")


@pytest.mark.parametrize(
    ("before", "after", "records"),
    [
        (5 * USD, 5 * USD - 1, True),  # from at the threshold to below it
        (9 * USD, 1 * USD, True),
        (5 * USD - 1, 5 * USD - 2, False),  # below already
        (5 * USD + 1, 5 * USD, False),  # down to the threshold, not below it
    ],
)
async def test_only_a_fall_from_at_or_above_to_below_the_threshold_records_an_attempt(
    app: Any,
    session_maker: async_sessionmaker[AsyncSession],
    before: int,
    after: int,
    records: bool,
) -> None:
    await paid_order(session_maker, amount_micros=before)
    await _enable(session_maker)  # threshold 5.00
    recorded = await _debit(session_maker, "user-1", before - after)
    assert (recorded is not None) == records
    assert len(await _attempts(session_maker)) == (1 if records else 0)


async def test_a_paused_or_disabled_auto_topup_records_nothing(
    app: Any, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    await paid_order(session_maker, amount_micros=10 * USD)
    await _enable(session_maker, status="paused")
    assert await _debit(session_maker, "user-1", 6 * USD) is None
    assert await _attempts(session_maker) == []


async def test_a_hundred_concurrent_debits_across_the_threshold_record_one_attempt(
    app: Any, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    await paid_order(session_maker, amount_micros=10 * USD)
    await _enable(session_maker)
    results = await asyncio.gather(*(_debit(session_maker, "user-1", 60_000) for _ in range(100)))
    assert len([r for r in results if r is not None]) == 1
    assert len(await _attempts(session_maker)) == 1


async def _pending_attempt(maker: async_sessionmaker[AsyncSession]) -> str:
    await paid_order(maker, amount_micros=10 * USD)
    await _enable(maker)
    attempt_id = await _debit(maker, "user-1", 6 * USD)
    assert attempt_id is not None
    return attempt_id


async def _charging(maker: async_sessionmaker[AsyncSession], attempt_id: str) -> None:
    """The job takes the attempt (as `outcomes.start_charge` does): an answer is applied only
    to an attempt being charged."""
    async with session_scope(maker) as session:
        attempt = await repository.get_attempt(session, attempt_id, for_update=True)
        assert attempt is not None
        assert state.start_attempt(attempt, order_id=new_id("ord"), lease_until=utcnow())


async def test_soft_declines_retry_after_the_backoff_then_pause_at_the_fourth(
    app: Any, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    attempt_id = await _pending_attempt(session_maker)
    now = utcnow()
    for n, wait in ((1, timedelta(hours=1)), (2, timedelta(hours=6)), (3, timedelta(hours=24))):
        await _charging(session_maker, attempt_id)
        async with session_scope(session_maker) as session:
            decision = await outcomes.apply_decline(
                session,
                attempt_id,
                stripe_code="card_declined",
                decline_code="insufficient_funds",
                payment_intent_id=f"pi_{n}",
                pay_url=None,
                now=now,
            )
        assert decision.next_attempt_at == now + wait
        settings = await auto_topup_settings(session_maker)
        assert (settings.status, settings.soft_declines) == ("active", n)
        assert settings.next_attempt_at == now + wait
        attempts = await _attempts(session_maker)
        assert [a.status for a in attempts] == ["failed"] * n + ["pending"]
        attempt_id = attempts[-1].id
        # The retry holds the slot: a debit meanwhile records nothing.
        assert await _debit(session_maker, "user-1", 10_000) is None

    await _charging(session_maker, attempt_id)
    async with session_scope(session_maker) as session:
        last = await outcomes.apply_decline(
            session,
            attempt_id,
            stripe_code="card_declined",
            decline_code="insufficient_funds",
            payment_intent_id="pi_4",
            pay_url=None,
            now=now,
        )
    assert last.paused_reason == "card_declined"
    settings = await auto_topup_settings(session_maker)
    assert (settings.status, settings.paused_reason) == ("paused", "card_declined")
    assert [a.status for a in await _attempts(session_maker)] == ["failed"] * 4
    assert await notification_types(session_maker) == ["auto_topup.failed"] * 4 + [
        "auto_topup.paused"
    ]
    assert await _debit(session_maker, "user-1", 10_000) is None  # paused: no attempt


async def test_authentication_required_pauses_at_once_with_the_link_to_pay(
    app: Any, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    attempt_id = await _pending_attempt(session_maker)
    await _charging(session_maker, attempt_id)
    async with session_scope(session_maker) as session:
        await outcomes.apply_decline(
            session,
            attempt_id,
            stripe_code="authentication_required",
            decline_code="authentication_required",
            payment_intent_id="pi_auth",
            pay_url="http://portal.test/orders/ord_1/resume",
            now=utcnow(),
        )
    settings = await auto_topup_settings(session_maker)
    assert (settings.status, settings.paused_reason) == ("paused", "authentication_required")
    assert settings.action_payment_intent_id == "pi_auth"
    async with session_scope(session_maker) as session:
        paused = (
            await session.scalars(
                select(Notification).where(Notification.type == "auto_topup.paused")
            )
        ).one()
    assert paused.data["pay_url"] == "http://portal.test/orders/ord_1/resume"
    assert [a.status for a in await _attempts(session_maker)] == ["failed"]


async def test_a_success_clears_the_soft_declines_and_notifies(
    app: Any, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    attempt_id = await _pending_attempt(session_maker)
    now = utcnow()
    await _charging(session_maker, attempt_id)
    async with session_scope(session_maker) as session:
        await outcomes.apply_decline(
            session,
            attempt_id,
            stripe_code="card_declined",
            decline_code="generic_decline",
            payment_intent_id=None,
            pay_url=None,
            now=now,
        )
    retry = (await _attempts(session_maker))[-1]
    await _charging(session_maker, retry.id)
    async with session_scope(session_maker) as session:
        await outcomes.apply_success(
            session,
            retry.id,
            order_id="ord_auto",
            receipt_url="https://r.test/x",
            now=now + timedelta(hours=1),
        )
    settings = await auto_topup_settings(session_maker)
    assert (settings.soft_declines, settings.next_attempt_at) == (0, None)
    assert settings.last_attempt_at is not None
    assert settings.last_attempt_at + MIN_ATTEMPT_SPACING > now
    assert [a.status for a in await _attempts(session_maker)] == ["failed", "succeeded"]
    assert (await notification_types(session_maker))[-1] == "auto_topup.succeeded"


async def test_an_attempt_over_the_monthly_limit_is_skipped_and_notified(
    app: Any, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    await paid_order(session_maker, amount_micros=10 * USD)
    await _enable(session_maker, amount=20 * USD, monthly_limit=30 * USD)
    async with session_scope(session_maker) as session:
        session.add(
            AutoTopup(
                id="atu_done",
                user_id="user-1",
                status="succeeded",
                amount_micros=20 * USD,
                payment_method_id="pm_saved",
                created_at=utcnow(),
            )
        )
    attempt_id = await _debit(session_maker, "user-1", 6 * USD)
    assert attempt_id is not None
    async with session_scope(session_maker) as session:
        assert await outcomes.skip_over_monthly_limit(session, attempt_id, now=utcnow())
    async with session_scope(session_maker) as session:
        skipped = (
            await session.scalars(
                select(Notification).where(Notification.type == "auto_topup.skipped")
            )
        ).one()
        attempt = await session.get(AutoTopup, attempt_id)
        assert attempt is not None
        assert attempt.status == "skipped"
    assert skipped.data == {
        "reason": "monthly_limit",
        "amount": "20.00",
        "monthly_limit": "30.00",
        "spent_this_month": "20.00",
        "currency": "usd",
    }


async def test_a_decline_after_the_attempt_was_answered_changes_nothing(
    app: Any, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    # A lapsed lease: another run repeated the call and its success was applied first.
    attempt_id = await _pending_attempt(session_maker)
    await _charging(session_maker, attempt_id)
    now = utcnow()
    async with session_scope(session_maker) as session:
        await outcomes.apply_success(
            session, attempt_id, order_id="ord_auto", receipt_url=None, now=now
        )
    async with session_scope(session_maker) as session:
        decision = await outcomes.apply_decline(
            session,
            attempt_id,
            stripe_code="card_declined",
            decline_code="lost_card",
            payment_intent_id="pi_late",
            pay_url=None,
            now=now,
        )
    assert decision.paused_reason is None
    assert [a.status for a in await _attempts(session_maker)] == ["succeeded"]
    settings = await auto_topup_settings(session_maker)
    assert (settings.status, settings.soft_declines) == ("active", 0)
    assert await notification_types(session_maker) == ["auto_topup.succeeded"]
