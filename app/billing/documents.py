"""Which of an order's documents is its current invoice."""

from __future__ import annotations

from collections.abc import Sequence

from app.models.billing import DocumentKind, OrderDocument

REISSUE = "reissue"
"""The reason of the credit note and the new invoice of a reissue."""


def live_invoices(docs: Sequence[OrderDocument]) -> list[OrderDocument]:
    """The invoices no reissue replaced (a refund's credit note leaves its invoice current),
    oldest first: the last is the order's current invoice."""
    replaced = {
        d.invoice_id for d in docs if d.kind == DocumentKind.CREDIT_NOTE and d.reason == REISSUE
    }
    return [d for d in docs if d.kind == DocumentKind.INVOICE and d.stripe_id not in replaced]
