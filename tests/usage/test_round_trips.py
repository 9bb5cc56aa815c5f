"""What one debit costs the database, guarded so the hot path stays lean."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.usage.repository import UsageStore
from testing.helpers.ledger import debit, deposit


@pytest.mark.parametrize("settings_overrides", [{"service_token_cache_seconds": 60}])
async def test_a_debit_is_one_statement_in_autocommit(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    assert (await debit(client, gateway_headers, "alice", 1)).status_code == 201  # warm cache
    # One pooled connection, so every statement the store sends passes this logger.
    store = await UsageStore.open(app.state.settings.database_url.get_secret_value(), max_size=1)
    sent: list[str] = []
    async with store.pool.acquire() as conn:
        conn.add_query_logger(lambda query: sent.append(query.query.split()[0]))
    previous = app.state.usage_store
    app.gateway.start(store, app.state.service_token_verifier, app.state.jwt_verifier)
    try:
        response = await debit(client, gateway_headers, "alice", 7_000, model="m")
    finally:
        app.gateway.start(previous, app.state.service_token_verifier, app.state.jwt_verifier)
        await store.close()
    assert response.status_code == 201
    # One statement of data-modifying CTEs in autocommit: no BEGIN, no COMMIT, no reset.
    assert sent == ["WITH"]
