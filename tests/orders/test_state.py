"""The order and refund-request state machines: one owner of each status, a database CHECK that
equals the enum, and the diagram's moves."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.models.orders import Order, OrderStatus
from app.models.refunds import RefundRequest, RefundRequestStatus
from app.orders import state
from app.refunds import state as refund_state

APP = Path(__file__).resolve().parents[2] / "app"
STATE_MODULES = {
    APP / "orders" / "state.py",
    APP / "refunds" / "state.py",
    # Auto top-up's own state machines (an attempt's and the settings' statuses, never an
    # order's): their owners. An auto order moves through `transition()` like any other.
    APP / "auto_topup" / "outcomes.py",
    APP / "auto_topup" / "service.py",
}


def _status_writes(tree: ast.AST) -> list[int]:
    """Lines that write a `status` attribute: `x.status = …` (also in tuples and augmented),
    `setattr(x, "status", …)`, and bulk `update(Order|RefundRequest)` statements."""
    lines: list[int] = []

    def targets(node: ast.expr) -> list[ast.expr]:
        if isinstance(node, ast.Tuple | ast.List):
            return [t for elt in node.elts for t in targets(elt)]
        return [node]

    for node in ast.walk(tree):
        written: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            written = [t for target in node.targets for t in targets(target)]
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            written = [node.target]
        lines += [t.lineno for t in written if isinstance(t, ast.Attribute) and t.attr == "status"]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            if node.func.id == "setattr" and len(args) > 1:
                if isinstance(args[1], ast.Constant) and args[1].value == "status":
                    lines.append(node.lineno)
            if node.func.id == "update" and args and isinstance(args[0], ast.Name):
                if args[0].id in ("Order", "RefundRequest"):
                    lines.append(node.lineno)
    return lines


def _handles_orders_or_refunds(tree: ast.AST) -> bool:
    """Whether a module imports the Order or RefundRequest model (other tables, e.g. auto
    top-up attempts, have statuses of their own)."""
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module in ("app.models.orders", "app.models.refunds", "app.models")
        and any(a.name in ("Order", "RefundRequest") for a in node.names)
        for node in ast.walk(tree)
    )


def test_only_the_state_modules_assign_a_status() -> None:
    offenders = []
    checked = 0
    for path in sorted(APP.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if path in STATE_MODULES or not _handles_orders_or_refunds(tree):
            continue
        checked += 1
        for line in _status_writes(tree):
            offenders.append(f"{path.relative_to(APP.parent)}:{line}")
    assert checked > 10
    assert offenders == [], "status assigned outside app/orders/state.py, app/refunds/state.py"


def test_the_check_finds_what_it_looks_for() -> None:
    # The walker itself: each form it must catch is caught.
    source = (
        "order.status = 'paid'\n"
        "a, order.status = 1, 'paid'\n"
        "setattr(order, 'status', 'paid')\n"
        "stmt = update(Order).values(status='paid')\n"
        "order.amount = 1\n"
    )
    assert _status_writes(ast.parse(source)) == [1, 2, 3, 4]


def _check_values(definition: str) -> set[str]:
    """The quoted values a `status IN (…)` / `status = ANY (ARRAY[…])` CHECK allows."""
    return set(re.findall(r"'([^']*)'", definition))


@pytest.mark.parametrize(
    ("table", "enum"),
    [("orders", OrderStatus), ("refund_requests", RefundRequestStatus)],
)
async def test_the_database_check_allows_exactly_the_enum(app: Any, table: str, enum: Any) -> None:
    engine = app.state.engine
    async with engine.connect() as conn:
        definition = (
            await conn.execute(
                text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :name"),
                {"name": f"ck_{table}_status_known"},
            )
        ).scalar_one()
    assert _check_values(definition) == {s.value for s in enum}


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
