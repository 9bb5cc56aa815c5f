"""All SQL of the audit log."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.schemas import AuditFilter
from app.models.audit import AuditEntry


async def add_entry(session: AsyncSession, entry: AuditEntry) -> None:
    """Insert an entry in the session's transaction."""
    session.add(entry)
    await session.flush()


async def list_entries(
    session: AsyncSession, filters: AuditFilter, *, before_id: str | None, limit: int
) -> list[AuditEntry]:
    """Entries newest first, `limit + 1` rows."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if filters.subject_type:
        stmt = stmt.where(AuditEntry.subject_type == filters.subject_type)
    if filters.subject_id:
        stmt = stmt.where(AuditEntry.subject_id == filters.subject_id)
    if filters.actor_user_id:
        stmt = stmt.where(AuditEntry.actor_user_id == filters.actor_user_id)
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    return list((await session.scalars(stmt)).all())
