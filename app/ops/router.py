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
from app.metrics import DATABASE_SYNCHRONOUS_STANDBY, observe_pools
from app.openapi import problem_responses

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Readiness, and the primary this instance writes to."""

    status: Literal["ready"]
    primary: str
    """The host (`host:port`, or a socket folder) of the URL that the portal's connection
    reached: the one taking writes."""
    synchronous_standby: bool
    """Whether that primary waits for a synchronous standby before a COMMIT returns
    (`synchronous_standby_names` set and `synchronous_commit` on, remote_write or
    remote_apply). False: writes are acknowledged with no copy elsewhere (a standby down, or
    none configured); pg_auto_failover clears the names when no standby can keep up."""
    synchronous_standbys_streaming: int | None
    """Standbys streaming as synchronous (`pg_stat_replication`, sync or quorum); null when the
    database role cannot see them (grant it `pg_monitor`)."""


_READINESS = text(
    """
SELECT pg_is_in_recovery() AS in_recovery,
       current_setting('synchronous_standby_names') <> ''
         AND current_setting('synchronous_commit') IN ('on', 'remote_write', 'remote_apply')
         AS synchronous,
       (SELECT count(*) FILTER (WHERE sync_state IN ('sync', 'quorum'))
               - count(*) FILTER (WHERE sync_state IS NULL)
        FROM pg_stat_replication) AS streaming
"""
)


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
async def readyz(engine: EngineDep) -> Readiness:
    """503 when the database does not answer within 2 seconds or is not a primary; else which
    host takes this instance's writes and whether a synchronous standby confirms them."""
    try:
        async with asyncio.timeout(2.0), engine.connect() as conn:
            row = (await conn.execute(_READINESS)).one()
            raw = await conn.get_raw_connection()
            primary = str(getattr(raw.driver_connection, "endpoint", "") or "?")
    except Exception as exc:
        raise ServiceUnavailable("The database does not answer.") from exc
    if row.in_recovery:
        raise ServiceUnavailable("The database is a standby: it takes no writes.")
    streaming = int(row.streaming)
    DATABASE_SYNCHRONOUS_STANDBY.set(1 if row.synchronous else 0)
    return Readiness(
        status="ready",
        primary=primary,
        synchronous_standby=bool(row.synchronous),
        # A row with a NULL sync_state is one this role may not read: the count is unknown.
        synchronous_standbys_streaming=streaming if streaming >= 0 else None,
    )


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
