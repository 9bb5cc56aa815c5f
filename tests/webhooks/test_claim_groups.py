"""The claim groups' writer (app/webhooks/service.py) stopped while a group is in flight: no
delivery is left waiting, neither the group's nor those queued behind it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.webhooks import service


def _event(event_id: str) -> dict[str, Any]:
    return {"id": event_id, "type": "payment_intent.succeeded", "data": {"object": {}}}


async def test_a_writer_cancelled_in_flight_ends_the_deliveries_queued_behind_its_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_flight = asyncio.Event()

    async def commit(self: Any, batch: list[Any]) -> list[Any]:
        in_flight.set()
        await asyncio.Event().wait()  # the group's transaction, until the service stops
        raise AssertionError("unreachable")

    monkeypatch.setattr(service._ClaimGroups, "_commit", commit)
    groups = service._ClaimGroups(maker=None)  # type: ignore[arg-type]
    first = asyncio.ensure_future(groups.claim(None, None, _event("evt_1")))  # type: ignore[arg-type]
    await in_flight.wait()
    queued = asyncio.ensure_future(groups.claim(None, None, _event("evt_2")))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    (writer,) = groups._writers
    writer.cancel()
    for delivery in (first, queued):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(delivery, timeout=5)
    assert not groups._pending
    assert not groups._writers
