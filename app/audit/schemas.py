"""Response shapes of the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


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
