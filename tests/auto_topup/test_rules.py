"""The rules that keep a failing card from looping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.auto_topup.rules import (
    HARD_DECLINE_CODES,
    MIN_ATTEMPT_SPACING,
    after_decline,
    classify_decline,
    may_attempt,
    month_start,
    next_allowed_attempt,
    within_monthly_limit,
)

NOW = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("stripe_code", "decline_code"),
    [
        ("authentication_required", "authentication_required"),
        ("authentication_required", None),
        ("expired_card", "expired_card"),
        ("card_declined", "lost_card"),
        ("card_declined", "stolen_card"),
        ("card_declined", "pickup_card"),
        ("card_declined", "restricted_card"),
        ("incorrect_number", "incorrect_number"),
        ("card_declined", "invalid_account"),
    ],
)
def test_the_issue_s_hard_declines_are_hard(stripe_code: str, decline_code: str | None) -> None:
    assert classify_decline(stripe_code, decline_code) == "hard"


@pytest.mark.parametrize(
    "decline_code",
    ["insufficient_funds", "generic_decline", "do_not_honor", "try_again_later", None],
)
def test_every_other_decline_is_soft(decline_code: str | None) -> None:
    assert classify_decline("card_declined", decline_code) == "soft"


def test_the_hard_list_is_exactly_the_issue_s() -> None:
    assert HARD_DECLINE_CODES == {
        "authentication_required",
        "expired_card",
        "lost_card",
        "stolen_card",
        "pickup_card",
        "restricted_card",
        "incorrect_number",
        "invalid_account",
    }


def test_authentication_required_pauses_at_once_with_its_reason() -> None:
    decision = after_decline(
        stripe_code="authentication_required",
        decline_code="authentication_required",
        soft_declines=0,
        now=NOW,
    )
    assert decision.paused_reason == "authentication_required"
    assert decision.next_attempt_at is None


def test_a_hard_decline_pauses_at_once_as_card_declined() -> None:
    decision = after_decline(
        stripe_code="card_declined", decline_code="stolen_card", soft_declines=1, now=NOW
    )
    assert (decision.paused_reason, decision.next_attempt_at) == ("card_declined", None)


def test_soft_declines_back_off_one_six_then_24_hours_and_pause_at_the_fourth() -> None:
    first = after_decline(
        stripe_code="card_declined", decline_code="insufficient_funds", soft_declines=0, now=NOW
    )
    assert (first.paused_reason, first.soft_declines) == (None, 1)
    assert first.next_attempt_at == NOW + timedelta(hours=1)
    second = after_decline(
        stripe_code="card_declined", decline_code="insufficient_funds", soft_declines=1, now=NOW
    )
    assert (second.paused_reason, second.soft_declines) == (None, 2)
    assert second.next_attempt_at == NOW + timedelta(hours=6)
    third = after_decline(
        stripe_code="card_declined", decline_code="insufficient_funds", soft_declines=2, now=NOW
    )
    assert (third.paused_reason, third.soft_declines) == (None, 3)
    assert third.next_attempt_at == NOW + timedelta(hours=24)
    fourth = after_decline(
        stripe_code="card_declined", decline_code="insufficient_funds", soft_declines=3, now=NOW
    )
    assert (fourth.paused_reason, fourth.soft_declines, fourth.next_attempt_at) == (
        "card_declined",
        4,
        None,
    )


def test_attempts_are_ten_minutes_apart_whatever_else_allows() -> None:
    last = NOW - timedelta(minutes=9, seconds=59)
    assert not may_attempt(now=NOW, last_attempt_at=last, next_attempt_at=None)
    assert may_attempt(now=NOW, last_attempt_at=NOW - MIN_ATTEMPT_SPACING, next_attempt_at=None)
    assert may_attempt(now=NOW, last_attempt_at=None, next_attempt_at=None)


def test_a_backoff_holds_attempts_until_it_ends() -> None:
    later = NOW + timedelta(hours=1)
    assert not may_attempt(now=NOW, last_attempt_at=None, next_attempt_at=later)
    assert may_attempt(now=later, last_attempt_at=None, next_attempt_at=later)
    assert (
        next_allowed_attempt(last_attempt_at=NOW, next_attempt_at=NOW + timedelta(minutes=1))
        == NOW + MIN_ATTEMPT_SPACING
    )


def test_the_monthly_limit_counts_what_was_charged_and_what_is_in_flight() -> None:
    assert within_monthly_limit(
        spent_this_month_micros=80_000_000,
        amount_micros=20_000_000,
        monthly_limit_micros=100_000_000,
    )
    assert not within_monthly_limit(
        spent_this_month_micros=80_000_001,
        amount_micros=20_000_000,
        monthly_limit_micros=100_000_000,
    )


def test_the_month_is_the_utc_calendar_month() -> None:
    assert month_start(NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    local = datetime(2026, 12, 1, 0, 30, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    assert month_start(local) == datetime(2026, 12, 1, tzinfo=UTC)
