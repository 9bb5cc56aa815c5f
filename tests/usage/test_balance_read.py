"""The gateway's balance read never queues behind its writes for a connection: it runs on a pool
of its own (`UsageStore.read_pool`)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.usage.repository import read_pool_size
from testing.helpers.ledger import debit, deposit, gateway_balance

POOL_SIZE = 3


@pytest.mark.parametrize(
    "settings_overrides",
    [{"database_pool_size": POOL_SIZE, "service_token_cache_seconds": 60}],
)
async def test_the_balance_read_answers_while_every_write_connection_is_taken(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    await gateway_balance(client, gateway_headers, "alice")  # the token lookup is cached now
    store = app.state.usage_store
    assert store.pool.get_max_size() == POOL_SIZE
    assert store.read_pool.get_max_size() == read_pool_size(POOL_SIZE) == 2
    # Every write connection busy (as under a burst of debits queued on a hot wallet's lock).
    taken = [await store.pool.acquire() for _ in range(POOL_SIZE)]
    try:
        write = asyncio.create_task(debit(client, gateway_headers, "alice", 7_000))
        await asyncio.sleep(0.2)
        assert not write.done()  # the debit waits for a write connection...
        # ...the balance read does not (the bound only turns a hang into a failure).
        wallet = await asyncio.wait_for(gateway_balance(client, gateway_headers, "alice"), 10)
        assert wallet["balance_micros"] == 1_000_000
        assert not write.done()
    finally:
        for conn in taken:
            await store.pool.release(conn)
    response = await write
    assert response.status_code == 201, response.text
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 993_000
