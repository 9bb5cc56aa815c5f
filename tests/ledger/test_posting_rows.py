"""The rows a credit writes, as its statements write them (each is a statement built once and
run with the posting's values, issue 22): the header (its details, or SQL NULL), the entries
in the legs' order with the header's time, the lot as returned, and the credit's notification
with its delivery columns' defaults."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ledger import lots
from app.ledger.lots_repository import new_lot_columns
from app.models.base import utcnow
from app.models.ledger import CreditLot, LotSource, Txn
from app.models.notifications import ChannelStatus, Notification
from app.notifications import events
from app.notifications.service import enqueue

Maker = async_sessionmaker[AsyncSession]


async def _top_up(
    maker: Maker, user_id: str, reference: str, *, tax: int, details: bool
) -> lots.Credited:
    async with session_scope(maker) as session:
        return await lots.credit(
            session,
            Txn(
                reference,
                "topup",
                "Top-up",
                details={"order_id": "ord_1", "tax_micros": tax} if details else None,
            ),
            user_id=user_id,
            amount_micros=20_000_000,
            source=LotSource.PURCHASE,
            account="stripe",
            expires_at=utcnow() + timedelta(days=365),
            order_id="ord_1",
            passed_on=("tax_payable", tax) if tax else None,
        )


async def test_a_credit_writes_its_header_entries_and_lot_as_posted(session_maker: Maker) -> None:
    credited = await _top_up(session_maker, "alice", "topup:pi_1", tax=1_600_000, details=True)
    assert credited.lot is not None
    async with session_maker() as session:
        header = (
            await session.execute(
                text(
                    "SELECT id, kind, user_id, description, details::text, created_at "
                    "FROM ledger_transactions WHERE reference = 'topup:pi_1'"
                )
            )
        ).one()
        entries = (
            await session.execute(
                text(
                    "SELECT account_id, amount_micros, balance_after_micros, created_at "
                    "FROM ledger_entries WHERE transaction_id = :t ORDER BY id"
                ),
                {"t": header.id},
            )
        ).all()
        lot = (
            await session.execute(select(CreditLot).where(CreditLot.reference == "topup:pi_1"))
        ).scalar_one()
    assert header.id == credited.posting.transaction.id
    assert (header.kind, header.user_id, header.description) == ("topup", "alice", "Top-up")
    assert header.details == '{"order_id": "ord_1", "tax_micros": 1600000}'
    wallet = credited.posting.wallets["alice"].id
    # The wallet's leg first (legs touch wallets first, by user), then the system accounts'.
    assert [(e.account_id, e.amount_micros, e.balance_after_micros) for e in entries] == [
        (wallet, 20_000_000, 20_000_000),
        ("sys_stripe", -21_600_000, None),
        ("sys_tax_payable", 1_600_000, None),
    ]
    assert {e.created_at for e in entries} == {header.created_at}
    returned = credited.lot
    columns = [c.key for c in CreditLot.__table__.columns]
    assert {c: getattr(returned, c) for c in columns} == {c: getattr(lot, c) for c in columns}
    assert (lot.source, lot.kind, lot.amount_micros, lot.remaining_micros) == (
        "purchase",
        "paid",
        20_000_000,
        20_000_000,
    )
    assert (lot.returned_micros, lot.swept_at, lot.created_at) == (0, None, header.created_at)


async def test_a_header_without_details_stores_sql_null(session_maker: Maker) -> None:
    await _top_up(session_maker, "bob", "topup:pi_2", tax=0, details=False)
    async with session_maker() as session:
        shape = (
            await session.execute(
                text(
                    "SELECT details IS NULL, (SELECT count(*) FROM ledger_entries e "
                    "WHERE e.transaction_id = t.id) FROM ledger_transactions t "
                    "WHERE reference = 'topup:pi_2'"
                )
            )
        ).one()
    assert tuple(shape) == (True, 2)  # not a JSON null; two legs without tax


def test_a_lot_refuses_a_column_it_does_not_write() -> None:
    with pytest.raises(TypeError, match="swept_at"):
        new_lot_columns(user_id="carol", swept_at=utcnow())


async def test_a_notification_is_pending_and_due_on_both_channels(session_maker: Maker) -> None:
    before = utcnow()
    async with session_scope(session_maker) as session:
        event_id = await enqueue(
            session,
            user_id="dave",
            type="topup.succeeded",
            data=events.topup_succeeded(
                order_id="ord_9", amount_micros=5_000_000, receipt_url=None
            ),
            email="dave@example.com",
        )
    async with session_maker() as session:
        row = await session.get(Notification, event_id)
    assert row is not None
    assert event_id.startswith("ntf_")
    assert (row.user_id, row.type, row.email) == ("dave", "topup.succeeded", "dave@example.com")
    assert row.data["order_id"] == "ord_9"
    assert row.data["receipt_url"] is None
    for channel in ("email", "webhook"):
        assert getattr(row, f"{channel}_status") == ChannelStatus.PENDING
        assert getattr(row, f"{channel}_attempts") == 0
        assert before <= getattr(row, f"{channel}_next_attempt_at") <= utcnow()
        assert getattr(row, f"{channel}_sent_at") is None
    assert before <= row.created_at <= utcnow()


async def test_a_posting_writes_the_callers_pending_changes_first(session_maker: Maker) -> None:
    """Its statements are Core (no autoflush): what the caller changed through the ORM is
    written before them, as when its first statement was an ORM insert."""
    async with session_scope(session_maker) as session:
        session.add(Notification(id="ntf_pending", user_id="erin", type="topup.succeeded", data={}))
        await lots.credit(
            session,
            Txn("adjustment:erin", "adjustment"),
            user_id="erin",
            amount_micros=1_000_000,
            source=LotSource.ADJUSTMENT,
            account="adjustments",
        )
        written = "SELECT count(*) FROM notifications WHERE id = 'ntf_pending'"
        assert (await session.execute(text(written))).scalar_one() == 1
