"""Recording and listing admin actions. Any capability that acts for an operator records it here,
in its own transaction, so the entry exists if and only if the action does; so do the portal's
changes to settings an operator also sets (spend limits), with the user as the actor."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import repository
from app.audit.schemas import AuditFilter
from app.ids import new_id
from app.models.audit import AuditEntry
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


async def list_entries(
    session: AsyncSession, filters: AuditFilter, page: PageRequest
) -> Slice[AuditEntry]:
    """A page of entries, newest first."""
    rows = await repository.list_entries(
        session, filters, before_id=before_id(page.cursor), limit=page.limit
    )
    return slice_by_id(rows, page.limit)
