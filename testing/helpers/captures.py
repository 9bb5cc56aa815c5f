"""Holds and capture batches for the tests: a reserve that must succeed, a batch of captures sent
to `POST /v1/internal/holds/captures`, a capture item, and the count of captures the store
applied in its batch statement."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client import REGISTRY

URL = "/v1/internal/holds/captures"


def combined() -> float:
    """Captures applied by the capture batch statement so far (the gateway's metric)."""
    sample = {"operation": "capture"}
    return REGISTRY.get_sample_value("billing_gateway_holds_combined_total", sample) or 0.0


async def reserve(
    client: httpx.AsyncClient, headers: dict[str, str], user: str, hold_id: str, amount: int
) -> None:
    body = {"user_id": user, "hold_id": hold_id, "amount_micros": amount}
    response = await client.post("/v1/internal/holds", json=body, headers=headers)
    assert response.status_code == 201, response.text


async def captures(
    client: httpx.AsyncClient, headers: dict[str, str], items: list[Any]
) -> httpx.Response:
    return await client.post(URL, json={"captures": items}, headers=headers)


def usage(hold_id: str, amount: int, **extra: Any) -> dict[str, Any]:
    """A capture item with a model and tokens."""
    return {
        "hold_id": hold_id,
        "amount_micros": amount,
        "model": "gpt-4o",
        "input_tokens": 10,
        "output_tokens": 5,
    } | extra
