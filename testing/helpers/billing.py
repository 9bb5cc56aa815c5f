"""Steps the billing profile and invoice tests share."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import after_commit_settled, session_scope
from app.models.ledger import LedgerEntry

GERMAN_COMPANY: dict[str, Any] = {
    "legal_name": "Beispiel GmbH",
    "email": "billing@beispiel.example",
    "address": {
        "line1": "Hauptstraße 1",
        "city": "Berlin",
        "postal_code": "10115",
        "country": "DE",
    },
    "tax_ids": [],
    "po_number": "PO-4711",
    "invoices": True,
}


def profile(**changes: Any) -> dict[str, Any]:
    """A billing profile body: the German company, with `changes`."""
    return {**GERMAN_COMPANY, **changes}


async def put_profile(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]
) -> dict[str, Any]:
    response = await client.put("/v1/billing-profile", json=body, headers=headers)
    assert response.status_code == 200, response.text
    await after_commit_settled()
    result: dict[str, Any] = response.json()
    return result


async def tax_payable(maker: async_sessionmaker[AsyncSession]) -> int:
    """What the ledger owes tax authorities (the `tax_payable` account's entries, micros)."""
    async with session_scope(maker) as session:
        total = await session.execute(
            select(func.coalesce(func.sum(LedgerEntry.amount_micros), 0)).where(
                LedgerEntry.account_id == "sys_tax_payable"
            )
        )
        return int(total.scalar_one())
