"""Every status has an owner: no code in `app/` but the state modules writes a status column,
whatever the table (orders, refund requests, auto top-up settings and attempts, holds,
notification channels), in Python or in SQL."""

from __future__ import annotations

import ast
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.auto_topup import state as auto_topup_state
from app.ledger import hold_state
from app.models import AutoTopup, AutoTopupSettings, Base
from app.models.ledger import HoldStatus
from app.models.notifications import ChannelStatus
from app.models.orders import OrderStatus, WebhookOutcome
from app.models.payment_methods import AttemptStatus, AutoTopupStatus, PausedReason
from app.models.refunds import RefundRequestStatus
from app.notifications import state as notification_state

APP = Path(__file__).resolve().parents[1] / "app"
STATE_MODULES = {
    APP / "orders" / "state.py",
    APP / "refunds" / "state.py",
    APP / "auto_topup" / "state.py",
    APP / "ledger" / "hold_state.py",
    APP / "notifications" / "state.py",
    APP / "orders" / "document_state.py",
}

STATUS_COLUMNS = frozenset(
    column.name
    for table in Base.metadata.tables.values()
    for column in table.columns
    if column.name == "status" or column.name.endswith("_status")
)
"""Every status column of every table (`status`, `email_status`, `stripe_status`, …)."""

_SQL_STATUS_WRITE = re.compile(
    r"\bSET\b(?:(?!\b(?:WHERE|FROM|RETURNING)\b).)*?\b\w*status\s*=", re.IGNORECASE | re.DOTALL
)
"""An SQL UPDATE writing a status column by hand (the state modules render these)."""


def _is_status_name(name: str) -> bool:
    return name in STATUS_COLUMNS


def _targets(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.Tuple | ast.List):
        return [t for elt in node.elts for t in _targets(elt)]
    return [node]


def _names_a_status(node: ast.expr | None) -> bool:
    """A string naming a status column (also an f-string ending in `_status`), a mapped column
    (`Notification.email_status`) or a variable holding one (`status_col`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _is_status_name(node.value)
    if isinstance(node, ast.JoinedStr) and node.values:
        last = node.values[-1]
        return isinstance(last, ast.Constant) and str(last.value).endswith("_status")
    if isinstance(node, ast.Attribute):
        return _is_status_name(node.attr)
    if isinstance(node, ast.Name):
        return "status" in node.id
    return False


def _creates(call: ast.Call) -> bool:
    """`insert(…).values(…)`: a new row starts in its initial status, not a move."""
    node: ast.expr = call.func
    while isinstance(node, ast.Attribute | ast.Call):
        node = node.value if isinstance(node, ast.Attribute) else node.func
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id == "insert"
    return False


def status_writes(tree: ast.AST) -> list[int]:
    """Lines that write a status: `x.status = …` (also in tuples, augmented, annotated),
    `setattr(x, "email_status", …)`, `update(…).values(status=…)` or with a status key, and an
    SQL string with `SET … status = `; a dict keyed by a status column or a variable holding
    one (the values of an UPDATE)."""
    lines: list[int] = []
    for node in ast.walk(tree):
        written: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            written = [t for target in node.targets for t in _targets(target)]
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            written = [node.target]
        lines += [
            t.lineno for t in written if isinstance(t, ast.Attribute) and _is_status_name(t.attr)
        ]
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "setattr" and len(node.args) > 1:
                if _names_a_status(node.args[1]):
                    lines.append(node.lineno)
            if isinstance(func, ast.Attribute) and func.attr == "values" and not _creates(node):
                keys = [k.arg for k in node.keywords if k.arg is not None]
                dict_keys = [
                    key
                    for arg in node.args
                    if isinstance(arg, ast.Dict)
                    for key in arg.keys
                    if key is not None
                ]
                if any(_is_status_name(k) for k in keys) or any(map(_names_a_status, dict_keys)):
                    lines.append(node.lineno)
        if isinstance(node, ast.Dict) and any(
            isinstance(key, ast.Attribute | ast.Name) and _names_a_status(key) for key in node.keys
        ):
            lines.append(node.lineno)  # `{status_col: …}`, `{Notification.email_status: …}`
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _SQL_STATUS_WRITE.search(node.value):
                lines.append(node.lineno)
    return sorted(set(lines))


def test_only_the_state_modules_write_a_status() -> None:
    offenders = []
    checked = 0
    for path in sorted(APP.rglob("*.py")):
        if path in STATE_MODULES:
            continue
        checked += 1
        tree = ast.parse(path.read_text(), str(path))
        offenders += [f"{path.relative_to(APP.parent)}:{line}" for line in status_writes(tree)]
    assert checked > 100
    assert offenders == [], "a status is written outside the state modules"


def test_the_state_modules_exist() -> None:
    assert all(path.is_file() for path in STATE_MODULES)


def test_the_walker_finds_every_form_of_write() -> None:
    source = (
        "order.status = 'paid'\n"
        "a, attempt.status = 1, 'failed'\n"
        "setattr(row, 'email_status', 'sent')\n"
        "setattr(row, f'{channel}_status', 'failed')\n"
        "stmt = update(Order).values(status='paid')\n"
        "stmt = update(Notification).values({status_col: status, error_col: None})\n"
        "values = {Notification.webhook_status: 'sent'}\n"
        "request.stripe_status = 'succeeded'\n"
        "SQL = 'UPDATE holds SET status = 1 WHERE id = $1'\n"
        "SQL = 'UPDATE holds SET captured_micros = $2, status = 1'\n"
        # Not writes: reads, creation, other attributes.
        "stmt = insert(AutoTopup).values(status='pending')\n"
        "ok = order.status == 'paid'\n"
        "order.amount = 1\n"
        "SQL = 'SELECT id FROM holds WHERE status = 1'\n"
        "SQL = 'UPDATE holds SET amount = 1 WHERE status = 2'\n"
    )
    assert status_writes(ast.parse(source)) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_status_columns_are_found() -> None:
    assert {"status", "email_status", "webhook_status", "stripe_status"} <= STATUS_COLUMNS


def _check_values(definition: str) -> set[str]:
    """The quoted values a `status IN (…)` / `status = ANY (ARRAY[…])` CHECK allows."""
    return set(re.findall(r"'([^']*)'", definition))


@pytest.mark.parametrize(
    ("constraint", "enum"),
    [
        ("ck_orders_status_known", OrderStatus),
        ("ck_refund_requests_status_known", RefundRequestStatus),
        ("ck_auto_topup_settings_status_known", AutoTopupStatus),
        ("ck_auto_topup_settings_paused_reason_known", PausedReason),
        ("ck_auto_topups_status_known", AttemptStatus),
        ("ck_holds_status_known", HoldStatus),
        ("ck_notifications_email_status_known", ChannelStatus),
        ("ck_notifications_webhook_status_known", ChannelStatus),
        ("ck_stripe_events_outcome_known", WebhookOutcome),
    ],
)
async def test_the_database_check_allows_exactly_the_enum(
    app: Any, constraint: str, enum: type[StrEnum]
) -> None:
    async with app.state.engine.connect() as conn:
        definition = (
            await conn.execute(
                text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :name"),
                {"name": constraint},
            )
        ).scalar_one()
    assert _check_values(definition) == {s.value for s in enum}


@pytest.mark.parametrize(
    "moves",
    [
        auto_topup_state.SETTINGS_MOVES,
        auto_topup_state.ATTEMPT_MOVES,
        hold_state.HOLD_MOVES,
        notification_state.CHANNEL_MOVES,
    ],
)
def test_every_status_has_a_row_in_its_table_and_is_in_the_diagram(moves: Any) -> None:
    enum: type[StrEnum] = type(next(iter(moves.allowed)))
    assert set(moves.allowed) == set(enum)
    module = {
        AutoTopupStatus: auto_topup_state,
        AttemptStatus: auto_topup_state,
        HoldStatus: hold_state,
        ChannelStatus: notification_state,
    }[enum]
    for status in enum:
        assert status.value in (module.__doc__ or "")


def _attempt(status: AttemptStatus) -> AutoTopup:
    return AutoTopup(
        id="atu_test", user_id="u", status=status, amount_micros=1, payment_method_id="pm"
    )


def test_an_attempt_moves_only_as_drawn() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 1, tzinfo=UTC)
    attempt = _attempt(AttemptStatus.PENDING)
    assert not auto_topup_state.end_attempt(attempt, AttemptStatus.SUCCEEDED, now=now)
    assert attempt.status == AttemptStatus.PENDING
    assert auto_topup_state.start_attempt(attempt, order_id="ord_1", lease_until=now)
    assert attempt.status == AttemptStatus.PROCESSING
    assert attempt.order_id == "ord_1"
    assert not auto_topup_state.end_attempt(attempt, AttemptStatus.CANCELED, now=now)
    assert auto_topup_state.end_attempt(attempt, AttemptStatus.FAILED, now=now, failure_code="x")
    assert attempt.completed_at == now
    assert attempt.lease_until is None
    # The user paid the declined PaymentIntent on-session after all.
    assert auto_topup_state.end_attempt(attempt, AttemptStatus.SUCCEEDED, now=now)
    assert not auto_topup_state.end_attempt(attempt, AttemptStatus.FAILED, now=now)
    assert attempt.status == AttemptStatus.SUCCEEDED


def test_only_an_active_auto_topup_pauses_and_only_the_user_lifts_it() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 1, tzinfo=UTC)
    row = AutoTopupSettings(user_id="u", soft_declines=2)
    auto_topup_state.disable(row)
    assert not auto_topup_state.pause(row, "disputed", action_payment_intent_id=None, now=now)
    assert row.status == AutoTopupStatus.DISABLED
    auto_topup_state.enable(row)
    assert row.status == AutoTopupStatus.ACTIVE
    assert row.soft_declines == 0
    assert auto_topup_state.pause(row, "card_declined", action_payment_intent_id="pi_1", now=now)
    assert (row.status, row.paused_reason, row.action_payment_intent_id) == (
        AutoTopupStatus.PAUSED,
        PausedReason.CARD_DECLINED,
        "pi_1",
    )
    assert not auto_topup_state.pause(row, "disputed", action_payment_intent_id=None, now=now)
    auto_topup_state.enable(row)
    assert row.status == AutoTopupStatus.ACTIVE
    assert row.paused_reason is None


def test_hold_statements_guard_the_move() -> None:
    assert hold_state.capture_sql() == ("status = 'captured'", "status IN ('active')")
    assert hold_state.release_sql("$7::text") == (
        "status = $7::text",
        "status IN ('active') AND $7::text IN ('released', 'expired')",
    )


def test_a_final_channel_status_stays_final_but_a_late_send_is_believed() -> None:
    assert notification_state.CHANNEL_MOVES.sources(ChannelStatus.PENDING) == [
        ChannelStatus.PENDING
    ]
    assert notification_state.CHANNEL_MOVES.sources(ChannelStatus.SENT) == [
        ChannelStatus.PENDING,
        ChannelStatus.FAILED,
    ]


def test_the_literal_copies_name_the_same_statuses_as_the_enums() -> None:
    # The API models and the rules still spell these as Literals; they must not drift.
    from typing import get_args

    from app.auto_topup import rules
    from app.auto_topup.schemas import AutoTopupOut
    from app.usage import schemas as usage_schemas

    def literal(annotation: Any) -> set[str]:
        return {a for a in get_args(annotation) if isinstance(a, str)} | {
            v for arg in get_args(annotation) for v in get_args(arg) if isinstance(v, str)
        }

    assert set(get_args(rules.PausedReason)) == {r.value for r in PausedReason}
    assert set(get_args(usage_schemas.HoldStatus)) == {s.value for s in HoldStatus}
    fields = AutoTopupOut.model_fields
    assert literal(fields["status"].annotation) == {s.value for s in AutoTopupStatus}
    assert literal(fields["paused_reason"].annotation) == {r.value for r in PausedReason}


def test_a_handlers_words_become_the_outcome_and_its_detail() -> None:
    from app.webhooks.registry import outcome_of

    assert outcome_of("credited") == (WebhookOutcome.PROCESSED, "credited")
    assert outcome_of("ignored: no matching order") == (WebhookOutcome.IGNORED, "no matching order")
    assert outcome_of("flagged: amount differs") == (WebhookOutcome.FLAGGED, "amount differs")
    assert outcome_of("payment failed, order stays pending: ignored: x") == (
        WebhookOutcome.PROCESSED,
        "payment failed, order stays pending: ignored: x",
    )


def test_a_channel_given_up_is_failed_once() -> None:
    from app.models.notifications import Notification

    row = Notification(id="ntf_1", email_status=ChannelStatus.PENDING)
    assert notification_state.give_up(row, "email", "gave up")
    assert (row.email_status, row.email_last_error) == (ChannelStatus.FAILED, "gave up")
    assert not notification_state.give_up(row, "email", "again")
    assert row.email_last_error == "gave up"
