"""The one writer of an order document's status: Stripe's, mirrored. Stripe's invoice moves
only forward (`draft` → `open` → `paid` / `void` / `uncollectible`, `uncollectible` → `paid` /
`void`) and a credit note's from `issued` to `void`; an older answer read late never takes a
document back."""

from __future__ import annotations

import structlog

from app.models.billing import DocumentKind, DocumentStatus, OrderDocument

log = structlog.get_logger(__name__)

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
    previous: str | None = doc.status
    try:
        new = DocumentStatus(status)
    except ValueError:  # a status Stripe added since: kept out of the CHECK, logged
        log.warning("document_status_unknown", document_id=doc.id, status=status)
        if previous is None:  # a new document starts where its lifecycle does
            note = doc.kind == DocumentKind.CREDIT_NOTE
            doc.status = DocumentStatus.ISSUED if note else DocumentStatus.DRAFT
        return previous
    if previous is not None and _RANK[new] < _RANK[DocumentStatus(previous)]:
        return previous
    doc.status = new
    return previous
