"""The refund request state machine, and the Stripe statuses mirrored on refund and dispute rows.
No other code assigns a refund request's, a Stripe refund's or a dispute's `status` (a test walks
the source to keep it so).

    pending ──► processing ──► succeeded
       │             │             │
       ▼             ▼             ▼
     denied        failed ◄────────┘  (a refund Stripe reported, then failed: the debit is reversed)

`failed` is final. Should Stripe still report a live refund for a failed (reversed) request, the
wallet is debited again by refund id and the request flagged for an operator
(`app/refunds/events.py`); it does not move back.
"""

from __future__ import annotations

import structlog

from app.models.base import utcnow
from app.models.refunds import Dispute, RefundRequest, RefundRequestStatus, StripeRefund

log = structlog.get_logger(__name__)

_S = RefundRequestStatus
_ALLOWED: dict[RefundRequestStatus, frozenset[RefundRequestStatus]] = {
    _S.PENDING: frozenset({_S.PROCESSING, _S.DENIED}),
    _S.PROCESSING: frozenset({_S.SUCCEEDED, _S.FAILED}),
    _S.SUCCEEDED: frozenset({_S.FAILED}),
    _S.DENIED: frozenset(),
    _S.FAILED: frozenset(),
}

FINAL_STATUSES = frozenset({_S.SUCCEEDED, _S.DENIED, _S.FAILED})


def transition(request: RefundRequest, new: RefundRequestStatus, *, reason: str) -> bool:
    """Move the request to `new` (False and no change when the diagram does not allow it); a
    move into a final status ends its retries and stamps `completed_at`."""
    current = RefundRequestStatus(request.status)
    if new not in _ALLOWED[current]:
        return False
    request.status = new
    if new in FINAL_STATUSES:
        request.next_attempt_at = None
        request.completed_at = utcnow()
    log.info(
        "refund_request_transition",
        refund_request_id=request.id,
        old=current.value,
        new=new.value,
        reason=reason,
    )
    return True


def mirror_refund_status(row: StripeRefund, status: str) -> str:
    """Record Stripe's status of a refund on our row; returns the previous one."""
    previous, row.status = row.status, status
    return previous


def mirror_request_stripe_status(request: RefundRequest, status: str) -> None:
    """Record Stripe's status of the request's refund on the request (`stripe_status`)."""
    request.stripe_status = status


def mirror_dispute_status(row: Dispute, status: str) -> str:
    """Record Stripe's status of a dispute on our row; returns the previous one."""
    previous, row.status = row.status, status
    return previous
