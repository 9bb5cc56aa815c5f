"""An invoice's status mirrors Stripe's forward only: a late, older event changes nothing."""

from __future__ import annotations

import pytest

from app.models.billing import DocumentStatus, OrderDocument
from app.orders import document_state


def _doc(status: DocumentStatus) -> OrderDocument:
    return OrderDocument(id="doc_1", status=status)


@pytest.mark.parametrize(
    ("start", "reported", "moved", "end"),
    [
        (DocumentStatus.DRAFT, "open", True, DocumentStatus.OPEN),
        (DocumentStatus.OPEN, "paid", True, DocumentStatus.PAID),
        # invoice.finalized delivered after invoice.paid: stays paid
        (DocumentStatus.PAID, "open", False, DocumentStatus.PAID),
        (DocumentStatus.PAID, "draft", False, DocumentStatus.PAID),
        (DocumentStatus.VOID, "paid", False, DocumentStatus.VOID),
        (DocumentStatus.UNCOLLECTIBLE, "paid", True, DocumentStatus.PAID),
        (DocumentStatus.ISSUED, "void", True, DocumentStatus.VOID),
        (DocumentStatus.OPEN, "open", False, DocumentStatus.OPEN),
        # a status Stripe adds one day is logged and ignored, never a CHECK violation
        (DocumentStatus.OPEN, "scheduled", False, DocumentStatus.OPEN),
    ],
)
def test_a_document_status_moves_forward_only(
    start: DocumentStatus, reported: str, moved: bool, end: DocumentStatus
) -> None:
    doc = _doc(start)
    assert document_state.move(doc, reported) is moved
    assert doc.status == end


def test_a_new_document_starts_where_stripe_says_or_at_the_start() -> None:
    assert document_state.initial("open", is_note=False) == DocumentStatus.OPEN
    assert document_state.initial(None, is_note=False) == DocumentStatus.DRAFT
    assert document_state.initial("weird", is_note=True) == DocumentStatus.ISSUED
