"""The status of an order's invoices and credit notes: Stripe's, mirrored forward only.

Stripe's webhooks arrive in any order (an `invoice.finalized` after the `invoice.paid` it
preceded), so a document's status only moves forward along Stripe's own lifecycle::

    draft ──► open ──► paid
      │        │  └──► void
      │        └─────► uncollectible ──► paid / void
      └──► (any of the above)
    issued ──► void                         (credit notes)

`move()` is the only code that sets `OrderDocument.status` after its creation
(`tests/test_status_owners.py`).
"""

from __future__ import annotations

import structlog

from app.models.billing import DocumentStatus, OrderDocument

log = structlog.get_logger(__name__)

S = DocumentStatus
_FORWARD: dict[DocumentStatus, frozenset[DocumentStatus]] = {
    S.DRAFT: frozenset({S.OPEN, S.PAID, S.VOID, S.UNCOLLECTIBLE}),
    S.OPEN: frozenset({S.PAID, S.VOID, S.UNCOLLECTIBLE}),
    S.UNCOLLECTIBLE: frozenset({S.PAID, S.VOID}),
    S.ISSUED: frozenset({S.VOID}),
    S.PAID: frozenset(),
    S.VOID: frozenset(),
}


def initial(reported: object, *, is_note: bool) -> DocumentStatus:
    """A new document's status: Stripe's, or where its lifecycle starts when Stripe's is
    missing or new to us."""
    try:
        return DocumentStatus(str(reported))
    except ValueError:
        return DocumentStatus.ISSUED if is_note else DocumentStatus.DRAFT


def move(doc: OrderDocument, reported: str) -> bool:
    """Take Stripe's `reported` status when it is ahead of the document's; False (nothing
    changed) for a repeat, a late older status or one Stripe has added since (logged)."""
    try:
        new = DocumentStatus(reported)
    except ValueError:
        log.warning("document_status_unknown", document_id=doc.id, status=reported)
        return False
    if new not in _FORWARD[DocumentStatus(doc.status)]:
        return False
    doc.status = new
    return True
