"""Recording and listing admin actions. Any capability that acts for an operator records it here,
in its own transaction, so the entry exists if and only if the action does; so do the portal's
changes to settings an operator also sets (spend limits), with the user as the actor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import repository
from app.audit.schemas import AuditFilter
from app.errors import IdempotencyConflict
from app.idempotency import hash_request
from app.ids import new_id
from app.models.audit import AuditEntry
from app.models.ledger import LedgerTransaction, Txn
from app.pagination import PageRequest, Slice, before_id, slice_by_id
from app.request_context import current_request_id


async def record_admin_action(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append an audit entry in the caller's transaction (so it exists iff the action does)."""
    entry = AuditEntry(
        id=new_id("aud"),
        actor_user_id=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        reason=reason,
        details=details,
        request_id=current_request_id(),
    )
    await repository.add_entry(session, entry)
    return entry


class Posting(Protocol):
    """A ledger posting's outcome (`app.ledger.service.PostResult`): the transaction, or the
    original one when `replayed`."""

    @property
    def transaction(self) -> LedgerTransaction: ...

    @property
    def replayed(self) -> bool: ...


class OperatorRequest(Protocol):
    """An operator's request body that posts to a wallet: why, and its idempotency key."""

    @property
    def idempotency_key(self) -> str: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True, slots=True)
class OperatorPosting:
    """An operator's posting to a user's wallet (an adjustment, a grant) under an idempotency
    key: the same key and body (`request_hash`) answer the original posting, the key with
    another body is a 409 `idempotency_conflict`, and only the first time is audited."""

    actor: str
    user_id: str
    idempotency_key: str
    reason: str
    request_hash: str

    @classmethod
    def of(
        cls, actor: str, user_id: str, body: OperatorRequest, fingerprint: dict[str, Any]
    ) -> OperatorPosting:
        """The operator's request `body` for the user; `fingerprint`: what of the body makes
        it the same request (hashed with the user's id)."""
        request_hash = hash_request({"user_id": user_id, **fingerprint})
        return cls(actor, user_id, body.idempotency_key, body.reason, request_hash)

    def txn(self, reference: str, kind: str, description: str | None) -> Txn:
        """The posting's ledger transaction: its request's hash, and the reason and actor in
        its `details`."""
        details = {"reason": self.reason, "actor": self.actor}
        return Txn(reference, kind, description, self.request_hash, details)

    async def audit(
        self, session: AsyncSession, posting: Posting, action: str, details: dict[str, Any]
    ) -> None:
        """Audit the posting as `action` with `details` (and its `transaction_id`), unless it
        is a replay: then check it replays this very request (409 otherwise)."""
        if posting.replayed:
            if posting.transaction.request_hash != self.request_hash:
                raise IdempotencyConflict(
                    f"idempotency_key {self.idempotency_key!r} was used with a different request."
                )
            return
        await record_admin_action(
            session,
            actor=self.actor,
            action=action,
            subject_type="wallet",
            subject_id=self.user_id,
            reason=self.reason,
            details={**details, "transaction_id": posting.transaction.id},
        )


async def list_entries(
    session: AsyncSession, filters: AuditFilter, page: PageRequest
) -> Slice[AuditEntry]:
    """A page of entries, newest first."""
    rows = await repository.list_entries(
        session, filters, before_id=before_id(page.cursor), limit=page.limit
    )
    return slice_by_id(rows, page.limit)
