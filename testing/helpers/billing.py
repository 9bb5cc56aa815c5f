"""Steps the billing profile and invoice tests share."""

from __future__ import annotations

from typing import Any

import httpx

from app.db import after_commit_settled

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
