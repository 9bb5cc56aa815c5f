"""An invoice's status mirrors Stripe's forward only: a late, older event changes nothing."""

from __future__ import annotations

import pytest

from app.billing.state import mirror_document_status
from app.models.billing import DocumentStatus, OrderDocument


@pytest.mark.parametrize(
    ("start", "reported", "end"),
    [
        (None, "draft", DocumentStatus.DRAFT),
        (DocumentStatus.DRAFT, "open", DocumentStatus.OPEN),
        (DocumentStatus.OPEN, "paid", DocumentStatus.PAID),
        # invoice.finalized delivered after invoice.paid: stays paid
        (DocumentStatus.PAID, "open", DocumentStatus.PAID),
        (DocumentStatus.PAID, "draft", DocumentStatus.PAID),
        (DocumentStatus.UNCOLLECTIBLE, "paid", DocumentStatus.PAID),
        (DocumentStatus.ISSUED, "void", DocumentStatus.VOID),
        # a status Stripe adds one day is logged and ignored, never a CHECK violation
        (DocumentStatus.OPEN, "scheduled", DocumentStatus.OPEN),
    ],
)
def test_a_document_status_moves_forward_only(
    start: DocumentStatus | None, reported: str, end: DocumentStatus
) -> None:
    doc = OrderDocument(id="doc_1", status=start)
    assert mirror_document_status(doc, reported) == start
    assert doc.status == end


def test_a_new_document_in_a_status_new_to_us_starts_at_the_start() -> None:
    invoice = OrderDocument(id="doc_1", kind="invoice", status=None)
    note = OrderDocument(id="doc_2", kind="credit_note", status=None)
    mirror_document_status(invoice, "scheduled")
    mirror_document_status(note, "scheduled")
    assert (invoice.status, note.status) == (DocumentStatus.DRAFT, DocumentStatus.ISSUED)
