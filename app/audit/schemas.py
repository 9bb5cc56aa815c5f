"""Response shapes of the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which entries a list of the audit log holds (None: any)."""

    subject_type: str | None = None
    subject_id: str | None = None
    actor_user_id: str | None = None


class AuditEntryOut(BaseModel):
    """An admin action."""

    id: str
    actor_user_id: str
    action: str
    subject_type: str
    subject_id: str
    reason: str | None
    details: dict[str, Any] | None
    request_id: str | None
    created_at: datetime
