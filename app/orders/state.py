"""The order state machine: the statuses, the moves between them, and the one function that makes
a move. No other code assigns `Order.status` (a test walks the source to keep it so).

    pending ──► processing ──► paid ◄──► partially_refunded ◄──► refunded
       │             │           │               │                 │
       │             │           └───────────────┼─────────────────┘
       │             │                           ▼
       │             │             disputed ──(won)──► paid / partially_refunded / refunded
       ▼             ▼
    canceled / expired / failed ──(Stripe says paid after all, logged)──► paid

Moves only go forward, with two kinds of exception, both recorded:
- a refund that Stripe reported and then failed gives its amount back, so `refunded` and
  `partially_refunded` can step back towards `paid` (the refunded amount decides);
- money that arrives at Stripe after we closed the order is credited anyway (it is the user's),
  through `transition(..., reason=PAID_AFTER_CLOSE)`, logged as a warning.

Any other backwards move (a late `processing` after `paid`, a `failed` after `paid`) is refused:
`transition()` answers False and changes nothing, and the caller records the event as ignored.
"""

from __future__ import annotations

from enum import StrEnum

import structlog

from app.models.base import utcnow
from app.models.orders import Order, OrderStatus

log = structlog.get_logger(__name__)

__all__ = [
    "CLOSED_UNPAID_STATUSES",
    "PAID_AFTER_CLOSE",
    "PAID_STATUSES",
    "PENDING_STATUSES",
    "OrderStatus",
    "is_paid",
    "is_pending",
    "settled_status",
    "transition",
]

PENDING_STATUSES = frozenset({OrderStatus.PENDING, OrderStatus.PROCESSING})
"""Not yet paid: may still be paid, canceled, expired or fail."""

PAID_STATUSES = frozenset(
    {
        OrderStatus.PAID,
        OrderStatus.PARTIALLY_REFUNDED,
        OrderStatus.REFUNDED,
        OrderStatus.DISPUTED,
    }
)
"""Money was received (and credited)."""

CLOSED_UNPAID_STATUSES = frozenset({OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.FAILED})

_S = OrderStatus
_ALLOWED: dict[OrderStatus, frozenset[OrderStatus]] = {
    _S.PENDING: frozenset({_S.PROCESSING, _S.PAID, _S.CANCELED, _S.EXPIRED, _S.FAILED}),
    # An async method in flight can still fail or be paid; the Checkout Session can no longer
    # be canceled or expire once its payment is processing.
    _S.PROCESSING: frozenset({_S.PAID, _S.FAILED}),
    _S.PAID: frozenset({_S.PARTIALLY_REFUNDED, _S.REFUNDED, _S.DISPUTED}),
    # Back towards paid only when a reported refund failed after all (the amount came back).
    _S.PARTIALLY_REFUNDED: frozenset({_S.PAID, _S.REFUNDED, _S.DISPUTED}),
    _S.REFUNDED: frozenset({_S.PAID, _S.PARTIALLY_REFUNDED, _S.DISPUTED}),
    # A won dispute returns the order to where the refunds left it.
    _S.DISPUTED: frozenset({_S.PAID, _S.PARTIALLY_REFUNDED, _S.REFUNDED}),
    _S.CANCELED: frozenset(),
    _S.EXPIRED: frozenset(),
    _S.FAILED: frozenset(),
}


class TransitionReason(StrEnum):
    """Reasons that allow a move the diagram otherwise refuses."""

    PAID_AFTER_CLOSE = "paid_after_close"
    """Stripe received the money after we closed the order: credit it anyway."""


PAID_AFTER_CLOSE = TransitionReason.PAID_AFTER_CLOSE


def transition(
    order: Order, new: OrderStatus, *, reason: str, logged_by_caller: bool = False
) -> bool:
    """Move `order` to `new` and keep the timestamps that go with each status; False (and no
    change) when the diagram does not allow the move. `reason` says who moved it (a webhook id,
    `cancel`, `reconciler`, `refund failed`, …) and is logged (`order_transition`), unless
    `logged_by_caller`: the caller's own line says the move, its old status and reason (a
    credit's `order_paid`); `PAID_AFTER_CLOSE` is the one reason that lets a closed order
    become paid (always logged, as a warning)."""
    current = OrderStatus(order.status)
    exceptional = (
        reason == PAID_AFTER_CLOSE and current in CLOSED_UNPAID_STATUSES and new == _S.PAID
    )
    if not exceptional and new not in _ALLOWED[current]:
        return False
    now = utcnow()
    order.status = new
    if new in CLOSED_UNPAID_STATUSES:
        order.closed_at = now
    elif new == _S.PAID and current not in PAID_STATUSES:
        order.paid_at = now
        order.closed_at = None
        order.failure_code = None
        order.failure_message = None
    if new not in PENDING_STATUSES:
        order.next_check_at = None
    if exceptional:
        log.warning("order_paid_after_close", order_id=order.id, previous_status=current.value)
    elif not logged_by_caller:
        log.info(
            "order_transition", order_id=order.id, old=current.value, new=new.value, reason=reason
        )
    return True


def settled_status(order: Order) -> OrderStatus:
    """The status a paid order's refunded amount implies, as if no dispute were open."""
    if order.refunded_micros >= order.amount_micros:
        return _S.REFUNDED
    if order.refunded_micros > 0:
        return _S.PARTIALLY_REFUNDED
    return _S.PAID


def is_pending(status: str) -> bool:
    """Pending or processing: not paid yet and not closed."""
    return status in PENDING_STATUSES


def is_paid(status: str) -> bool:
    """Money was received for the order."""
    return status in PAID_STATUSES
