"""Operators check the ledger's invariants."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from app.auth import AdminUser
from app.db import SessionDep
from app.ledger.verify import verify_ledger

router = APIRouter(prefix="/admin/ledger", tags=["admin"])


class ViolationOut(BaseModel):
    """One broken invariant."""

    rule: str
    subject: str
    detail: str


class LedgerVerifyOut(BaseModel):
    """`ok` when every invariant holds; otherwise each violation."""

    ok: bool
    violations: list[ViolationOut]


@router.get("/verify", summary="Verify the ledger")
async def verify_the_ledger(admin: AdminUser, session: SessionDep) -> LedgerVerifyOut:
    """Check every ledger invariant: balanced transactions, stored balances equal to their
    entries, held amounts equal to active holds, and the whole ledger summing to zero."""
    violations = await verify_ledger(session)
    return LedgerVerifyOut(
        ok=not violations,
        violations=[
            ViolationOut(rule=v.rule, subject=v.subject, detail=v.detail) for v in violations
        ],
    )
