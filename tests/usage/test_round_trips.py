"""What one debit costs the database, guarded so the hot path stays lean."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import event

from tests.conftest import BACKEND
from tests.ledger.helpers import debit, deposit


@pytest.mark.parametrize("settings_overrides", [{"service_token_cache_seconds": 60}])
async def test_a_debit_is_one_statement_on_postgres_and_three_on_sqlite(
    app: Any,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    assert (await debit(client, gateway_headers, "alice", 1)).status_code == 201  # warm cache
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
    # PostgreSQL: one statement of data-modifying CTEs; SQLite: header, wallet, entries.
    expected = ["WITH"] if BACKEND == "postgres" else ["INSERT", "UPDATE", "INSERT"]
    assert statements == expected
    assert transactions[:2] == ["begin", "commit"]
