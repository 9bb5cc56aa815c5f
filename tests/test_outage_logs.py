"""A database outage is logged by class and SQLSTATE only: SQLAlchemy's message quotes the
statement and its parameters (user ids, emails, amounts), and asyncpg's may quote values too."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import APIRouter
from sqlalchemy import exc as sa_exc

from app import errors
from app.usage import repository as usage_repository

SECRET_PARAMETER = "alice.private@example.com"
STATEMENT = "UPDATE accounts SET balance_micros = $1 WHERE user_id = $2"

probe = APIRouter()


@probe.post("/probe/outage", responses={503: {"description": "The database is out."}})
async def outage() -> None:
    raise sa_exc.OperationalError(
        STATEMENT,
        (4_200_000, SECRET_PARAMETER),
        asyncpg.exceptions.AdminShutdownError(
            f"terminating connection due to administrator command ({SECRET_PARAMETER})"
        ),
    )


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


@pytest.fixture
def app(app: Any) -> Any:
    app.include_router(probe)
    return app


def _assert_says_only_the_class(fields: dict[str, Any]) -> None:
    said = repr(fields)
    assert SECRET_PARAMETER not in said
    assert "4200000" not in said
    assert "UPDATE" not in said
    assert "AdminShutdownError" in said


async def test_the_portal_logs_a_database_outage_without_its_statement_or_parameters(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(errors, "log", recorder)
    response = await client.post("/probe/outage")
    assert response.status_code == 503, response.text
    [(event, fields)] = recorder.lines
    assert event == "database_unavailable"
    _assert_says_only_the_class(fields)
    assert fields["error"] == "OperationalError"
    assert fields["driver_error"] == "AdminShutdownError"
    assert fields["sqlstate"] == "57P01"
    assert fields["path"] == "/probe/outage"


async def test_the_gateway_logs_a_database_outage_without_its_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(usage_repository, "log", recorder)

    @usage_repository._outage_is_503
    async def debit() -> None:
        raise asyncpg.exceptions.AdminShutdownError(
            f"terminating connection due to administrator command ({SECRET_PARAMETER})"
        )

    with pytest.raises(errors.ServiceUnavailable):
        await debit()
    [(event, fields)] = recorder.lines
    assert event == "database_unavailable"
    _assert_says_only_the_class(fields)
    assert fields["error"] == "AdminShutdownError"
    assert fields["sqlstate"] == "57P01"
    assert fields["operation"] == "debit"
