"""One transaction per request, committed before the response is sent."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from sqlalchemy import func, select

from app.config import Settings
from app.db import SessionDep, create_engine, session_scope
from app.models import ServiceToken

probe = APIRouter()


@probe.post("/probe/token/{token_hash}")
async def add_token(token_hash: str, session: SessionDep) -> dict[str, str]:
    # No flush: the INSERT happens at commit, after the endpoint has returned.
    session.add(
        ServiceToken(id=f"svt_{token_hash}", name="probe", token_hash=token_hash, scopes="usage")
    )
    return {"status": "created"}


@pytest.fixture
def app(app: Any) -> Any:
    app.include_router(probe)
    return app


async def test_a_failed_commit_never_becomes_a_2xx(
    client: httpx.AsyncClient, session_maker: Any
) -> None:
    assert (await client.post("/probe/token/aaa")).status_code == 200
    # Same hash, another id: the unique constraint fails at commit time.
    session_maker_rows = await _count(session_maker)
    response = await client.post("/probe/token/aaa", params={"x": 1})
    assert response.status_code == 500, response.text
    assert response.json()["code"] == "internal_error"
    assert await _count(session_maker) == session_maker_rows == 1


async def _count(session_maker: Any) -> int:
    async with session_scope(session_maker) as session:
        return int(
            (await session.execute(select(func.count()).select_from(ServiceToken))).scalar_one()
        )


async def test_the_pool_pings_a_connection_with_one_statement(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:  # a new connection: not pinged
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
        assert driver is not None
        sent: list[str] = []
        driver.add_query_logger(lambda logged: sent.append(logged.query))
        async with engine.connect():  # the same one, from the pool: pinged at checkout
            pass
        assert sent == [";"]  # no BEGIN and ROLLBACK around it: one round trip, not three
    finally:
        await engine.dispose()
