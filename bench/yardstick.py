"""The yardstick: the least a debit endpoint can do on this stack, measured in the same run as the
service so that every figure in the table is a ratio, not a machine-dependent absolute.

A minimal FastAPI app (same uvicorn, one worker) with a raw asyncpg pool of 10 connections. Its
one endpoint parses the same body as `POST /v1/internal/usage` and, in one transaction, debits the
account with a single conditional UPDATE and inserts one entry under a unique idempotency key:
no auth, no replay lookup, no double entry. Served with

    BENCH_YARDSTICK_DSN=postgresql://… uvicorn --factory bench.yardstick:app_factory

on a database prepared by `prepare()` (its own two tables, 1,000 funded accounts).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

SCHEMA = """
CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE entries (
    id bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    account_id text NOT NULL REFERENCES accounts (id),
    amount bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

DEBIT = (
    "UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1 RETURNING balance"
)
ENTRY = "INSERT INTO entries (idempotency_key, account_id, amount) VALUES ($1, $2, $3)"


async def prepare(dsn: str, accounts: int, funds: int) -> None:
    """Create the tables and fund `user-0 .. user-<accounts-1>`."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.copy_records_to_table(
            "accounts", records=[(f"user-{i}", funds) for i in range(accounts)]
        )
    finally:
        await conn.close()


class Debit(BaseModel):
    user_id: str
    request_id: str
    amount_micros: int
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


def create_app(dsn: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/debit", status_code=201, response_model=None)
    async def debit(request: Request, body: Debit) -> JSONResponse | dict[str, object]:
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            balance = await conn.fetchval(DEBIT, body.amount_micros, body.user_id)
            if balance is None:
                return JSONResponse({"code": "insufficient_balance"}, status_code=402)
            await conn.execute(ENTRY, body.request_id, body.user_id, body.amount_micros)
        return {"request_id": body.request_id, "balance_micros": balance, "replayed": False}

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory bench.yardstick:app_factory`."""
    return create_app(os.environ["BENCH_YARDSTICK_DSN"])
