"""The email each event type sends: a subject and a plain-text body."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def _usd(value: Any) -> str:
    text = str(value)
    if "." in text:
        whole, fraction = text.split(".", 1)
        # Balances carry 6 decimals; a person reads cents.
        text = f"{whole}.{fraction[:2].ljust(2, '0')}"
    return f"${text}"


def _when(value: Any) -> str:
    """An ISO instant as a person reads it: `2027-03-31 12:00 UTC`."""
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return str(value)


def _credit(data: dict[str, Any]) -> str:
    """Paid credit is just credit; granted credit says what it is."""
    source = str(data.get("source"))
    named = {"promo_code": "promo code credit", "grant": "granted credit"}
    return named.get(source, "credit")


def render_email(notification_type: str, data: dict[str, Any]) -> tuple[str, str]:
    """`(subject, body)` for a notification."""
    if notification_type == "balance.low":
        subject = f"Your ToRouter balance is below {_usd(data['threshold'])}"
        body = (
            f"Your available balance is {_usd(data['available'])}, below the "
            f"{_usd(data['threshold'])} alert you set. Top up in the portal to keep your "
            "requests running."
        )
    elif notification_type == "topup.succeeded":
        subject = f"{_usd(data['amount'])} was added to your ToRouter balance"
        body = f"Your top-up of {_usd(data['amount'])} was credited."
    elif notification_type == "auto_topup.succeeded":
        subject = f"Auto top-up: {_usd(data['amount'])} was added to your balance"
        body = (
            f"Your balance fell below your auto top-up threshold, so your saved card was "
            f"charged {_usd(data['amount'])}."
        )
    elif notification_type == "auto_topup.failed":
        subject = "Auto top-up failed: your card was declined"
        retry = data.get("next_attempt_at")
        body = f"We could not charge your saved card {_usd(data['amount'])}" + (
            f"; we will try again after {retry}." if retry else "."
        )
    elif notification_type == "auto_topup.paused":
        subject = "Auto top-up is paused"
        reasons = {
            "authentication_required": "your bank asks you to confirm the payment",
            "card_declined": "your card was declined several times",
            "payment_method_removed": "its card was removed",
            "disputed": "a payment of yours was disputed with your bank (a chargeback)",
        }
        reason = reasons.get(str(data.get("reason")), str(data.get("reason")))
        body = (
            f"Auto top-up is paused because {reason}. It stays paused until you enable it "
            "again in the portal."
        )
        if data.get("pay_url"):
            body += f"\n\nComplete the payment: {data['pay_url']}"
    elif notification_type == "auto_topup.skipped":
        subject = "Auto top-up skipped: monthly limit reached"
        body = (
            f"An auto top-up of {_usd(data['amount'])} would exceed your monthly limit of "
            f"{_usd(data['monthly_limit'])} ({_usd(data['spent_this_month'])} charged this "
            "month), so your card was not charged."
        )
    elif notification_type == "refund.succeeded":
        subject = f"Your refund of {_usd(data['amount'])} was processed"
        body = f"{_usd(data['amount'])} was refunded to your card."
    elif notification_type == "credits.expiring":
        days = data.get("days_before")
        subject = f"{_usd(data['amount'])} of your ToRouter {_credit(data)} expires soon"
        body = (
            f"{_usd(data['amount'])} of your ToRouter {_credit(data)} expires on "
            f"{_when(data['expires_at'])}"
            + (f", in {days} day{'s' if days != 1 else ''}" if isinstance(days, int) else "")
            + ". Credit that expires soonest is spent first; whatever is left then is removed "
            "from your balance."
        )
    elif notification_type == "credits.expired":
        subject = f"{_usd(data['amount'])} of your ToRouter {_credit(data)} expired"
        body = (
            f"{_usd(data['amount'])} of your ToRouter {_credit(data)} expired unspent on "
            f"{_when(data['expired_at'])} and was removed from your balance."
        )
    else:
        subject = f"ToRouter billing: {notification_type}"
        body = "Something changed on your ToRouter billing account."
    return subject, body + "\n\n— ToRouter Billing\n"
