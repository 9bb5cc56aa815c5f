"""The order and refund-request state machines: the diagram's moves. (One owner of each status
and the database CHECKs: `tests/test_status_owners.py`.)"""

from __future__ import annotations

from typing import Any

import pytest

from app.models.orders import Order, OrderStatus
from app.models.refunds import RefundRequest, RefundRequestStatus
from app.orders import state
from app.refunds import state as refund_state


def _order(status: OrderStatus, **kw: Any) -> Order:
    return Order(
        id="ord_test",
        user_id="u",
        status=status,
        mode="elements",
        amount_micros=10_000_000,
        refunded_micros=kw.pop("refunded_micros", 0),
        **kw,
    )


def test_forward_moves_keep_their_timestamps() -> None:
    order = _order(OrderStatus.PENDING, next_check_at=None)
    assert state.transition(order, OrderStatus.PROCESSING, reason="webhook")
    assert state.transition(order, OrderStatus.PAID, reason="webhook")
    assert order.status == OrderStatus.PAID
    assert order.paid_at is not None
    assert order.next_check_at is None
    assert order.closed_at is None


@pytest.mark.parametrize(
    ("start", "new"),
    [
        (OrderStatus.PAID, OrderStatus.PROCESSING),
        (OrderStatus.PAID, OrderStatus.FAILED),
        (OrderStatus.PROCESSING, OrderStatus.CANCELED),
        (OrderStatus.CANCELED, OrderStatus.PENDING),
        (OrderStatus.EXPIRED, OrderStatus.PAID),
        (OrderStatus.PAID, OrderStatus.PAID),
    ],
)
def test_backward_moves_are_refused_and_change_nothing(start: OrderStatus, new: Any) -> None:
    order = _order(start)
    assert not state.transition(order, new, reason="late event")
    assert order.status == start


def test_paid_after_close_is_the_one_explicit_exception() -> None:
    order = _order(OrderStatus.CANCELED, failure_code="x", failure_message="y")
    assert state.transition(order, OrderStatus.PAID, reason=state.PAID_AFTER_CLOSE)
    assert order.status == OrderStatus.PAID
    assert order.closed_at is None
    assert order.failure_code is None
    assert order.paid_at is not None
    # The reason does not open any other door.
    paid = _order(OrderStatus.PAID)
    assert not state.transition(paid, OrderStatus.PENDING, reason=state.PAID_AFTER_CLOSE)


def test_refunds_settle_the_status_both_ways() -> None:
    order = _order(OrderStatus.PAID, refunded_micros=4_000_000)
    assert state.settled_status(order) == OrderStatus.PARTIALLY_REFUNDED
    order.refunded_micros = 10_000_000
    assert state.settled_status(order) == OrderStatus.REFUNDED
    order.status = OrderStatus.REFUNDED
    # A refund that failed after it was reported steps back.
    order.refunded_micros = 0
    assert state.transition(order, state.settled_status(order), reason="refund failed")
    assert order.status == OrderStatus.PAID


def test_every_status_is_in_the_diagram() -> None:
    for status in OrderStatus:
        assert status.value in (state.__doc__ or "")


def test_refund_requests_move_only_as_drawn() -> None:
    request = RefundRequest(id="rfr_test", status=RefundRequestStatus.PENDING)
    assert not refund_state.transition(request, RefundRequestStatus.SUCCEEDED, reason="x")
    assert refund_state.transition(request, RefundRequestStatus.PROCESSING, reason="approved")
    assert request.completed_at is None
    assert refund_state.transition(request, RefundRequestStatus.SUCCEEDED, reason="re_1")
    assert request.completed_at is not None
    assert request.next_attempt_at is None
    assert not refund_state.transition(request, RefundRequestStatus.PENDING, reason="x")
    assert refund_state.transition(request, RefundRequestStatus.FAILED, reason="refund failed")
    assert not refund_state.transition(request, RefundRequestStatus.DENIED, reason="x")
