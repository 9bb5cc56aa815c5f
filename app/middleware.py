"""Pure ASGI middleware: request ids, access logs, body size limit, the request's Stripe budget
(`app.stripe_gateway.deadline`) and the last-resort 500."""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge, internal_error_response, problem_response
from app.metrics import HTTP_LATENCY, HTTP_REQUESTS
from app.request_context import reset_request_id, set_request_id
from app.stripe_gateway.deadline import DEFAULT_DEADLINE_SECONDS, stripe_budget

log = structlog.get_logger("app.access")

_MAX_REQUEST_ID = 128


def clean_request_id(raw: str | None) -> str:
    """The caller's `X-Request-ID` when it is short and printable, else a new one."""
    if raw and len(raw) <= _MAX_REQUEST_ID and raw.isprintable() and " " not in raw:
        return raw
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The matched route's full template (`/v1/orders/{order_id}`), never the path: a bounded
    metrics label. FastAPI 0.16x mounts included routers lazily, so `scope["route"]` holds the
    router's own path (`/orders/{order_id}`); the effective route context (what FastAPI's own
    telemetry reads) has the prefixed one."""
    fastapi_scope = scope.get("fastapi")
    context = (
        fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    )
    template = getattr(context, "path_format", None)
    if not isinstance(template, str) or not template:
        route = scope.get("route")
        template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else "unmatched"


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    """Binds `X-Request-ID` (kept from the caller or generated) to the response and the logs,
    refuses bodies over `max_body_bytes` with 413, opens the request's Stripe budget
    (`stripe_deadline_seconds` for all its Stripe calls together), and turns any unhandled
    exception into a 500 problem without a trace."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        stripe_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        log_successes: bool = True,
    ) -> None:
        """`log_successes=False`: the access line only for an answer that is not a 2xx (for
        an endpoint whose every success logs a line of its own, with the request id)."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.stripe_deadline_seconds = stripe_deadline_seconds
        self.log_successes = log_successes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = clean_request_id(headers.get(b"x-request-id", b"").decode("latin-1") or None)
        token = set_request_id(request_id)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status_holder: dict[str, Any] = {"status": None}
        too_large = False

        async def send_with_id(message: Message) -> None:
            if too_large:
                # The app saw the body cut short and answered something else; our 413 wins.
                return
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        async def send_too_large() -> None:
            nonlocal too_large
            too_large = False
            response = problem_response(
                413,
                PayloadTooLarge.code,
                PayloadTooLarge.title,
                f"The request body exceeds {self.max_body_bytes} bytes.",
            )
            await response(scope, receive, send_with_id)

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await send_too_large()
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received, too_large
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        too_large = True
                        raise _BodyTooLarge
                return message

            try:
                with stripe_budget(self.stripe_deadline_seconds):
                    await self.app(scope, limited_receive, send_with_id)
            except _BodyTooLarge:
                pass
            if too_large and status_holder["status"] is None:
                await send_too_large()
        except Exception:
            log.exception("unhandled_exception", path=scope.get("path"), method=scope["method"])
            if status_holder["status"] is None:
                await internal_error_response()(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            template = route_template(scope)
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(method, template, str(status_holder["status"] or 500)).inc()
            HTTP_LATENCY.labels(method, template).observe(elapsed)
            status = status_holder["status"]
            if self.log_successes or status is None or not 200 <= status < 300:
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("request_id")
            reset_request_id(token)
