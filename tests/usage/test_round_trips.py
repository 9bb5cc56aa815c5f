"""What one debit costs the database, guarded so the hot path stays lean."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import event

from app.usage.repository import PostgresUsageStore
from tests.conftest import BACKEND
from tests.ledger.helpers import debit, deposit


@pytest.mark.parametrize("settings_overrides", [{"service_token_cache_seconds": 60}])
async def test_a_debit_is_one_statement_on_postgres_and_one_transaction_on_sqlite(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    assert (await debit(client, gateway_headers, "alice", 1)).status_code == 201  # warm cache
    if BACKEND == "postgres":
        # One pooled connection, so every statement the store sends passes this logger.
        store = await PostgresUsageStore.open(
            app.state.settings.database_url.get_secret_value(), max_size=1
        )
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
        return

    statements: list[str] = []
    transactions: list[str] = []

    def on_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.startswith("BEGIN"):
            statements.append(statement.split()[0])

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "begin", lambda conn: transactions.append("begin"))
    event.listen(engine, "commit", lambda conn: transactions.append("commit"))
    try:
        response = await debit(client, gateway_headers, "alice", 7_000, model="m")
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
    assert response.status_code == 201
    # SQLite: the spend limits (none here), header, wallet, entries and the usage record, in one
    # transaction; the wallet has no watch (no alert, no auto top-up), so the alerts' crossing
    # rule and the auto top-up trigger look nothing up, as in the PostgreSQL statement.
    assert statements == ["SELECT", "INSERT", "UPDATE", "INSERT", "INSERT"]
    assert transactions[:2] == ["begin", "commit"]
