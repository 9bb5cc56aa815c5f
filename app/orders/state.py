"""Order status transitions. They only move forward: an event that would move an order
backwards (a late `processing` after `paid`, a `failed` after `paid`) is recorded and ignored.

    pending ──► processing ──► paid ──► partially_refunded ──► refunded
       │             │           │               │
       │             │           └──────┬────────┘
       │             │                  ▼
       │             │              disputed ──(won)──► paid / partially_refunded
       ▼             ▼
    canceled / expired / failed
"""

from __future__ import annotations

PENDING_STATUSES = frozenset({"pending", "processing"})
"""Not yet paid: may still be paid, canceled, expired or fail."""

PAID_STATUSES = frozenset({"paid", "partially_refunded", "refunded", "disputed"})
"""Money was received (and credited)."""

CLOSED_UNPAID_STATUSES = frozenset({"canceled", "expired", "failed"})

_ALLOWED: dict[str, frozenset[str]] = {
    "pending": frozenset({"processing", "paid", "canceled", "expired", "failed"}),
    # An async method in flight can still fail or be paid; the Checkout Session can no longer
    # be canceled or expire once its payment is processing.
    "processing": frozenset({"paid", "failed"}),
    "paid": frozenset({"partially_refunded", "refunded", "disputed"}),
    "partially_refunded": frozenset({"refunded", "disputed"}),
    # A won dispute returns the order to where the refunds left it.
    "disputed": frozenset({"paid", "partially_refunded", "refunded"}),
    "refunded": frozenset({"disputed"}),
    "canceled": frozenset(),
    "expired": frozenset(),
    "failed": frozenset(),
}


def can_transition(current: str, new: str) -> bool:
    """Whether an order may move from `current` to `new` (staying put is not a transition)."""
    return new in _ALLOWED.get(current, frozenset())


def is_pending(status: str) -> bool:
    """Pending or processing: not paid yet and not closed."""
    return status in PENDING_STATUSES


def is_paid(status: str) -> bool:
    """Money was received for the order."""
    return status in PAID_STATUSES
