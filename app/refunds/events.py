"""Stripe's refund and dispute events applied: what a refund or dispute object Stripe sends does
to the order, the refund request and the ledger. Every function here is idempotent: Stripe's
events arrive twice, late and out of order, and our own calls are repeated by the reconciler.
Statuses move only through `app/orders/state.py` and `app/refunds/state.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.auto_topup import service as auto_topup_service
from app.ledger import lots
from app.ledger import repository as ledger_repository
from app.ledger.service import PostResult
from app.models.base import utcnow
from app.models.orders import Order
from app.models.refunds import Dispute, RefundRequest, RefundRequestStatus, StripeRefund
from app.money import cents_to_micros
from app.notifications import events
from app.notifications.service import enqueue
from app.orders import repository as orders_repository
from app.orders import state as order_state
from app.orders.state import OrderStatus
from app.orders.tax import pre_tax_of, tax_share
from app.refunds import repository
from app.refunds.state import (
    mirror_dispute_status,
    mirror_refund_status,
    mirror_request_stripe_status,
    transition,
)

log = structlog.get_logger(__name__)

FAILED_REFUND_STATUSES = ("failed", "canceled")


@dataclass(frozen=True, slots=True)
class OrderTransfer:
    """One kind of ledger transfer a refund or a dispute makes for an order: into the wallet
    from `account` (out of it for a negative amount), once per refund request, Stripe refund or
    dispute: `reference` `<kind>:<its id>` (or `<prefix>:<its id>`), `details` the order's id
    and its id (under `id_key`), `description` naming the order as `{order}`."""

    kind: str
    account: str
    id_key: str
    description: str
    require_available: bool = True
    """False for a debit Stripe has made already: it may take the balance negative."""
    prefix: str | None = None
    reverses: str | None = None
    """For a credit: the reference prefix of the debit it gives back (never more than it
    took)."""

    async def post(
        self, session: AsyncSession, order: Order, object_id: str, amount_micros: int
    ) -> PostResult | None:
        """The transfer, through the order's credit lot (`app.ledger.lots`): a debit takes back
        from it first, a credit gives back what its debit took. None when there was nothing
        to move (the lot was taken back in full before)."""
        move = lots.OrderMove(
            order_id=order.id,
            user_id=order.user_id,
            reference=f"{self.prefix or self.kind}:{object_id}",
            kind=self.kind,
            account=self.account,
            description=self.description.format(order=order.id),
            details={"order_id": order.id, self.id_key: object_id},
            tax_of=lambda micros: tax_share(order, micros),
        )
        if amount_micros < 0:
            return await lots.take_back(
                session, move, -amount_micros, require_available=self.require_available
            )
        assert self.reverses is not None, f"{self.kind} credits nothing back"
        return await lots.give_back(
            session, move, amount_micros, reverses=f"{self.reverses}:{object_id}"
        )


REQUEST_ID, REFUND_ID, DISPUTE_ID = "refund_request_id", "stripe_refund_id", "dispute_id"
REFUND = OrderTransfer("refund", "stripe", REQUEST_ID, "Refund of order {order}")
REFUND_REVERSAL = OrderTransfer(
    "refund_reversal", "stripe", REQUEST_ID, "Refund of order {order} failed", reverses="refund"
)
EXTERNAL_REFUND = OrderTransfer(
    "external_refund", "stripe", REFUND_ID, "Refund of order {order} made at Stripe", False
)
EXTERNAL_REFUND_REVERSAL = OrderTransfer(
    "refund_reversal",
    "stripe",
    REFUND_ID,
    "Refund of order {order} failed at Stripe",
    prefix="external_refund_reversal",
    reverses="external_refund",
)
REFUND_AFTER_REVERSAL = OrderTransfer(
    "refund",
    "stripe",
    REFUND_ID,
    "Refund of order {order} made at Stripe after all",
    False,
    prefix="refund_after_reversal",
)
"""A live refund Stripe reports for a request whose debit was reversed as failed: the money
has left, so the wallet is debited again (even below zero), once per Stripe refund."""
REFUND_AFTER_REVERSAL_REVERSAL = OrderTransfer(
    "refund_reversal",
    "stripe",
    REFUND_ID,
    "Refund of order {order} failed at Stripe",
    prefix="refund_after_reversal_reversal",
    reverses="refund_after_reversal",
)
DISPUTE = OrderTransfer("dispute", "disputes", DISPUTE_ID, "Dispute on order {order}", False)
DISPUTE_REVERSAL = OrderTransfer(
    "dispute_reversal", "disputes", DISPUTE_ID, "Dispute on order {order} won", reverses="dispute"
)


def _settle(order: Order, *, reason: str) -> None:
    """Move the order to the status its refunded amount implies (a disputed order stays
    disputed until the dispute closes)."""
    if order.status == OrderStatus.DISPUTED:
        return
    settled = order_state.settled_status(order)
    if order.status != settled:
        order_state.transition(order, settled, reason=reason)


async def reverse_request_debit(
    session: AsyncSession, request: RefundRequest, order: Order, *, reason: str
) -> None:
    """A refund that Stripe refused or failed: give the debited amount back, once."""
    await REFUND_REVERSAL.post(session, order, request.id, request.amount_micros)
    transition(request, RefundRequestStatus.FAILED, reason=reason)
    request.failure_reason = reason[:500]


REFUND_AFTER_REVERSAL_ATTENTION = (
    "Stripe reported refund {refund_id} as {status} after this request's debit was reversed as"
    " failed: the wallet was debited again for it (it may be negative). Check the refund at"
    " Stripe and the user's balance."
)


async def _live_after_reversal(
    session: AsyncSession,
    request: RefundRequest,
    order: Order,
    refund_id: str,
    amount_micros: int,
    status: str,
) -> None:
    """A live refund (pending or succeeded) for a request that was reversed as failed: the money
    left after all, so debit the wallet again, once by refund id, and flag it for an operator
    (the request stays `failed`: its own reversal cannot be repeated)."""
    posted = await REFUND_AFTER_REVERSAL.post(session, order, refund_id, -amount_micros)
    if posted is None or posted.replayed:
        return
    request.attention_reason = REFUND_AFTER_REVERSAL_ATTENTION.format(
        refund_id=refund_id, status=status
    )[:500]
    log.error(
        "refund_live_after_reversal",
        refund_request_id=request.id,
        refund_id=refund_id,
        status=status,
    )


async def _succeeded(
    session: AsyncSession, request: RefundRequest, order: Order, refund_id: str
) -> None:
    """The request's refund succeeded at Stripe: mark it, and tell the user once
    (`refund.succeeded`, in this transaction)."""
    if not transition(request, RefundRequestStatus.SUCCEEDED, reason=f"refund {refund_id}"):
        return
    succeeded = events.refund_succeeded(
        refund_request_id=request.id, order_id=order.id, amount_micros=request.amount_micros
    )
    await enqueue(session, user_id=order.user_id, type="refund.succeeded", data=succeeded)


async def _order_for(session: AsyncSession, obj: dict[str, Any]) -> Order | None:
    payment_intent = obj.get("payment_intent")
    if isinstance(payment_intent, dict):
        payment_intent = payment_intent.get("id")
    charge = obj.get("charge")
    if isinstance(charge, dict):
        charge = charge.get("id")
    order = await orders_repository.find_order(
        session, payment_intent_id=payment_intent, for_update=True
    )
    if order is None and charge:
        order = await orders_repository.find_order(session, charge_id=charge, for_update=True)
    return order


async def record_refund(session: AsyncSession, refund: dict[str, Any]) -> str:
    """Apply a Stripe refund object (from our own call or any `refund.*` / `charge.refunded`
    event); returns what it did."""
    refund_id = str(refund["id"])
    status = str(refund.get("status") or "pending")
    gross = cents_to_micros(int(refund["amount"]))
    metadata = refund.get("metadata") or {}
    request_id = metadata.get("refund_request_id")

    # Lock order: request, then order, then the refund row (as the approval path does).
    request = (
        await repository.get_request(session, str(request_id), for_update=True)
        if request_id
        else None
    )
    order = await _order_for(session, refund)
    if order is None:
        log.warning("refund_for_unknown_order", refund_id=refund_id)
        return "ignored: unknown order"
    if request is not None and request.order_id != order.id:
        log.error("refund_request_order_mismatch", refund_id=refund_id, request_id=request.id)
        request = None
    # What left the wallet's side: Stripe refunds the tax share too (an order taxed on top).
    amount = pre_tax_of(order, gross)
    existing = await repository.get_stripe_refund(session, refund_id, for_update=True)

    if existing is None:
        row = StripeRefund(
            id=refund_id,
            order_id=order.id,
            refund_request_id=request.id if request else None,
            amount_micros=amount,
            status=status,
        )
        session.add(row)
        if status in FAILED_REFUND_STATUSES:
            if request is not None and request.status == RefundRequestStatus.PROCESSING:
                await reverse_request_debit(session, request, order, reason=f"refund {status}")
            await session.flush()
            return f"refund {status}"
        if request is None:
            # Made outside the service (Stripe's dashboard): the money has left already, so the
            # wallet is debited even below zero — once, by refund id.
            await EXTERNAL_REFUND.post(session, order, refund_id, -amount)
        elif request.status == RefundRequestStatus.FAILED:
            await _live_after_reversal(session, request, order, refund_id, amount, status)
        order.refunded_micros = min(order.amount_micros, order.refunded_micros + amount)
        _settle(order, reason=f"refund {refund_id}")
        if request is not None:
            request.stripe_refund_id = refund_id
            mirror_request_stripe_status(request, status)
            request.next_attempt_at = None
            if status == "succeeded":
                await _succeeded(session, request, order, refund_id)
        await session.flush()
        return "refund recorded" if request else "external refund debited"

    if existing.status == status:
        return "refund unchanged"
    previous = mirror_refund_status(existing, status)
    if request is not None:
        mirror_request_stripe_status(request, status)
    if status in FAILED_REFUND_STATUSES and previous not in FAILED_REFUND_STATUSES:
        # A refund that failed after it was reported: the money did not leave after all.
        order.refunded_micros = max(0, order.refunded_micros - existing.amount_micros)
        _settle(order, reason=f"refund {refund_id} {status}")
        if request is not None and request.status in (
            RefundRequestStatus.PROCESSING,
            RefundRequestStatus.SUCCEEDED,
        ):
            await reverse_request_debit(session, request, order, reason=f"refund {status}")
        elif request is None:
            await EXTERNAL_REFUND_REVERSAL.post(session, order, refund_id, existing.amount_micros)
        elif await ledger_repository.get_transaction(
            session, f"{REFUND_AFTER_REVERSAL.prefix}:{refund_id}"
        ):
            # The debit again of a reversed request (above) is given back, once.
            await REFUND_AFTER_REVERSAL_REVERSAL.post(
                session, order, refund_id, existing.amount_micros
            )
    elif status == "succeeded" and request is not None:
        await _succeeded(session, request, order, refund_id)
    await session.flush()
    return f"refund {previous} -> {status}"


DISPUTE_CLOSED_STATUSES = frozenset({"won", "lost", "warning_closed"})


def is_inquiry(status: str) -> bool:
    """An inquiry (`warning_*`) asks questions and moves no money; a chargeback does."""
    return status.startswith("warning_")


def _money_moved(dispute: dict[str, Any]) -> tuple[bool, bool]:
    """Whether Stripe withdrew the disputed funds, and whether it reinstated them, as the
    dispute's balance transactions say (negative: withdrawn, positive: reinstated)."""
    amounts: list[int] = [
        bt["amount"]
        for bt in dispute.get("balance_transactions") or []
        if isinstance(bt, dict) and isinstance(bt.get("amount"), int)
    ]
    return any(a < 0 for a in amounts), any(a > 0 for a in amounts)


async def record_dispute(session: AsyncSession, dispute: dict[str, Any]) -> str:
    """Apply a Dispute as Stripe has it now (read from the API after any `charge.dispute.*`
    event, so lost, late or reordered events all end in Stripe's state). Money follows what
    Stripe actually withdrew and reinstated (its balance transactions), each once by reference
    (`dispute:<dp>`, `dispute_reversal:<dp>`): an inquiry moves none and leaves the order's
    status alone (refunds answer `dispute_open` while it is open); a chargeback marks the order
    `disputed` and, when its funds are withdrawn, pauses the user's auto top-up (`disputed`); a
    won one returns it to where its refunds left it."""
    dispute_id = str(dispute["id"])
    status = str(dispute.get("status") or "needs_response")
    # Lock order: the order, then the dispute row.
    order = await _order_for(session, dispute)
    if order is None:
        log.warning("dispute_for_unknown_order", dispute_id=dispute_id)
        return "ignored: unknown order"
    amount = pre_tax_of(order, cents_to_micros(int(dispute["amount"])))
    row = await repository.get_dispute(session, dispute_id, for_update=True)
    if row is None:
        row = Dispute(
            id=dispute_id,
            order_id=order.id,
            amount_micros=amount,
            status=status,
            reason=dispute.get("reason"),
            status_before=order.status,
        )
        session.add(row)
    else:
        mirror_dispute_status(row, status)
    if status in DISPUTE_CLOSED_STATUSES and row.closed_at is None:
        row.closed_at = utcnow()
    withdrawn, reinstated = _money_moved(dispute)
    done = []
    if withdrawn:
        debited = await DISPUTE.post(session, order, dispute_id, -amount)
        if debited is not None and not debited.replayed:
            done.append("debited")
            # A chargeback: the card may be stolen, so no more off-session charges of the
            # user's saved card until they enable auto top-up again (once, with the debit).
            if await auto_topup_service.pause(session, order.user_id, "disputed"):
                done.append("auto top-up paused")
    if reinstated:
        credited = await DISPUTE_REVERSAL.post(session, order, dispute_id, amount)
        if credited is not None and not credited.replayed:
            done.append("credited back")
    if is_inquiry(status):
        pass  # the order's status is left alone; eligibility sees the open inquiry
    elif status == "won":
        if order.status == OrderStatus.DISPUTED:
            order_state.transition(
                order, order_state.settled_status(order), reason=f"dispute {dispute_id} won"
            )
    elif order.status != OrderStatus.DISPUTED:
        # A chargeback open or lost: no refund of this order any more.
        order_state.transition(order, OrderStatus.DISPUTED, reason=f"dispute {dispute_id}")
    await session.flush()
    kind = "inquiry" if is_inquiry(status) else "dispute"
    return f"{kind} {status}" + (f": {', '.join(done)}" if done else "")
