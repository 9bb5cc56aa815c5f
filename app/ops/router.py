"""`/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

import asyncio
import hmac
from typing import Literal

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from app.config import Settings
from app.deps import EngineDep, SettingsDep, UsageStoreDep
from app.errors import NotFound, ServiceUnavailable, Unauthorized
from app.metrics import observe_pools
from app.openapi import problem_responses

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "ready"]


@router.get("/healthz", operation_id="healthz", summary="Process is alive")
async def healthz() -> Health:
    """Answers as long as the process serves requests."""
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Ready to serve",
    responses=problem_responses(ServiceUnavailable),
)
async def readyz(engine: EngineDep) -> Health:
    """503 when the database does not answer within 2 seconds."""
    try:
        async with asyncio.timeout(2.0), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise ServiceUnavailable("The database does not answer.") from exc
    return Health(status="ready")


def _check_metrics_access(request: Request, settings: Settings) -> None:
    """`BILLING_METRICS_TOKEN` set: that bearer token is required. Unset: open in development
    and tests, off (404) in production, where metrics would tell anyone about the traffic."""
    if settings.metrics_token is None:
        if settings.environment == "production":
            raise NotFound("Metrics are off; set BILLING_METRICS_TOKEN to serve them.")
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.metrics_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized("Metrics need the bearer token in BILLING_METRICS_TOKEN.")


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Metrics in the Prometheus text format.",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        },
        # 401: BILLING_METRICS_TOKEN is set and not sent; 404: off in production without one.
        **problem_responses(Unauthorized, NotFound),
    },
)
async def metrics(
    request: Request, settings: SettingsDep, engine: EngineDep, store: UsageStoreDep
) -> Response:
    """Metrics in the Prometheus text format; `Authorization: Bearer <BILLING_METRICS_TOKEN>`
    when that is set."""
    _check_metrics_access(request, settings)
    observe_pools(engine, store)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
