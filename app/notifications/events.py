"""The event types and what each one's `data` holds.

Money appears twice: decimal strings for people and the portal (`"amount": "20.00"`,
`"available": "3.120000"`, like the portal API) and integer `*_micros` for programs::

    balance.low            {threshold, threshold_micros, available, available_micros, currency}
                           (written in SQL by `app.alerts.sql`, in the balance change's statement)
    topup.succeeded        {order_id, amount, amount_micros, receipt_url, currency}
    auto_topup.succeeded   {auto_topup_id, order_id, amount, amount_micros, receipt_url, currency}
    auto_topup.failed      {auto_topup_id, order_id, amount, amount_micros, code, decline_code,
                            next_attempt_at, currency}
    auto_topup.paused      {reason, payment_method_id, pay_url, currency}
    auto_topup.skipped     {reason: "monthly_limit", amount, monthly_limit, spent_this_month,
                            currency}
    refund.succeeded       {refund_request_id, order_id, amount, amount_micros, currency}
    credits.expiring       {lot_id, source, amount, amount_micros, expires_at, days_before,
                            currency} (`amount`: what is left of the lot, 6 decimals)
    credits.expired        {lot_id, source, amount, amount_micros, expired_at, currency}
                           (`amount`: what expired unspent, 6 decimals)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

# Re-exported: the type lives with its table (`app.models` imports no domain).
from app.models.notifications import NotificationType as NotificationType
from app.money import CURRENCY, format_amount, format_balance


def _money(name: str, micros: int, fmt: Callable[[int], str] = format_amount) -> dict[str, Any]:
    """An amount both ways (see above): `name` a decimal string, `<name>_micros` the integer."""
    return {name: fmt(micros), f"{name}_micros": micros}


def _data(**fields: Any) -> dict[str, Any]:
    """An event's `data`: its fields, then the currency of its amounts (every event names it)."""
    return {**fields, "currency": CURRENCY}


def topup_succeeded(
    *, order_id: str, amount_micros: int, receipt_url: str | None
) -> dict[str, Any]:
    """`topup.succeeded`: a portal top-up was credited."""
    return _data(order_id=order_id, **_money("amount", amount_micros), receipt_url=receipt_url)


def auto_topup_succeeded(
    *, auto_topup_id: str, order_id: str, amount_micros: int, receipt_url: str | None
) -> dict[str, Any]:
    """`auto_topup.succeeded`: the saved card was charged and the balance credited."""
    return {"auto_topup_id": auto_topup_id} | topup_succeeded(
        order_id=order_id, amount_micros=amount_micros, receipt_url=receipt_url
    )


def auto_topup_failed(
    *,
    auto_topup_id: str,
    order_id: str | None,
    amount_micros: int,
    code: str | None,
    decline_code: str | None,
    next_attempt_at: datetime | None,
) -> dict[str, Any]:
    """`auto_topup.failed`: a charge was declined; `next_attempt_at` is null when paused."""
    return _data(
        auto_topup_id=auto_topup_id,
        order_id=order_id,
        **_money("amount", amount_micros),
        code=code,
        decline_code=decline_code,
        next_attempt_at=next_attempt_at.isoformat() if next_attempt_at else None,
    )


def auto_topup_paused(
    *, reason: str, payment_method_id: str | None, pay_url: str | None
) -> dict[str, Any]:
    """`auto_topup.paused`: no more attempts until the user enables it again; `pay_url` (a hard
    decline) is where the user can complete the payment on-session."""
    return _data(reason=reason, payment_method_id=payment_method_id, pay_url=pay_url)


def auto_topup_skipped(
    *, amount_micros: int, monthly_limit_micros: int, spent_this_month_micros: int
) -> dict[str, Any]:
    """`auto_topup.skipped`: an attempt would have exceeded the monthly limit."""
    return _data(
        reason="monthly_limit",
        amount=format_amount(amount_micros),
        monthly_limit=format_amount(monthly_limit_micros),
        spent_this_month=format_amount(spent_this_month_micros),
    )


def refund_succeeded(
    *, refund_request_id: str, order_id: str, amount_micros: int
) -> dict[str, Any]:
    """`refund.succeeded`: Stripe confirmed a refund."""
    return _data(
        refund_request_id=refund_request_id, order_id=order_id, **_money("amount", amount_micros)
    )


def credit_notice(
    *, lot_id: str, source: str, amount_micros: int, expires_at: datetime, days_before: int | None
) -> tuple[NotificationType, dict[str, Any]]:
    """A lot's expiry notice, its type with its `data`: `credits.expiring` when the lot expires
    in `days_before` days (or less) with `amount_micros` left; `credits.expired` (`days_before`
    None) when it expired with `amount_micros` unspent, out of the balance."""
    type_: NotificationType
    when: dict[str, Any]
    if days_before is None:
        type_, when = "credits.expired", {"expired_at": expires_at.isoformat()}
    else:
        type_ = "credits.expiring"
        when = {"expires_at": expires_at.isoformat(), "days_before": days_before}
    amount = _money("amount", amount_micros, format_balance)
    return type_, _data(lot_id=lot_id, source=source, **amount, **when)
