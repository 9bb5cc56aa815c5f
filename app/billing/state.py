"""The one writer of an order document's status: Stripe's, mirrored. Stripe's invoice moves
only forward (`draft` → `open` → `paid` / `void` / `uncollectible`, `uncollectible` → `paid` /
`void`) and a credit note's from `issued` to `void`; an older answer read late never takes a
document back."""

from __future__ import annotations

from app.models.billing import DocumentStatus, OrderDocument

_RANK = {
    DocumentStatus.DRAFT: 0,
    DocumentStatus.OPEN: 1,
    DocumentStatus.ISSUED: 1,
    DocumentStatus.UNCOLLECTIBLE: 2,
    DocumentStatus.PAID: 3,
    DocumentStatus.VOID: 3,
}


def mirror_document_status(doc: OrderDocument, status: str) -> str | None:
    """Record Stripe's status of the document unless it would be a step back; returns the
    previous one (None for a new document)."""
    new = DocumentStatus(status)
    previous: str | None = doc.status
    if previous is not None and _RANK[new] < _RANK[DocumentStatus(previous)]:
        return previous
    doc.status = new
    return previous
