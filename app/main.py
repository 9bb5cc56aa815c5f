"""`create_app()` and the lifespan that owns the engine, clients and periodic jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from app.admin.adjustments import router as admin_adjustments_router
from app.admin.audit import router as audit_router
from app.admin.grants import router as admin_grants_router
from app.admin.ledger import router as admin_ledger_router
from app.admin.limits import router as admin_limits_router
from app.admin.orders import router as admin_orders_router
from app.admin.promo_codes import router as admin_promo_codes_router
from app.admin.refunds import router as admin_refunds_router
from app.admin.usage import router as admin_reports_router
from app.admin.webhooks import router as admin_webhooks_router
from app.alerts.router import router as alerts_router
from app.auth.jwt import JwtVerifier
from app.auth.service_tokens import ServiceTokenVerifier
from app.auto_topup.charging import charge_auto_topups
from app.auto_topup.router import router as auto_topup_router
from app.billing.router import router as billing_router
from app.config import Settings, get_settings
from app.db import after_commit_settled, create_engine, create_session_maker
from app.errors import install_error_handlers
from app.jobs.credit_notices import send_credit_notices
from app.jobs.holds import expire_holds
from app.jobs.lots import expire_lots
from app.jobs.reconcile import run_reconciler
from app.jobs.runner import Job, JobRunner
from app.ledger.router import router as balance_router
from app.limits.router import router as limits_router
from app.logs import configure_logging
from app.middleware import RequestContextMiddleware
from app.models.base import utcnow
from app.notifications.delivery import Notifier, deliver_notifications
from app.openapi import install_openapi
from app.ops.router import router as ops_router
from app.orders.router import router as orders_router
from app.payment_methods.router import router as payment_methods_router
from app.primary import Primary
from app.promotions.router import router as promotions_router
from app.purchase.router import router as purchase_router
from app.rate_limits import RateLimiter
from app.refunds.router import router as refunds_router
from app.reports.router import router as reports_router
from app.stripe_gateway import StripeGateway
from app.usage.repository import UsageStore
from app.usage.router import PREFIX as GATEWAY_PREFIX
from app.usage.router import GatewayApp, openapi_paths
from app.webhooks.registry import load_handlers as load_webhook_handlers
from app.webhooks.router import STRIPE_WEBHOOK_PATH, answer_stripe_event
from app.webhooks.router import router as webhooks_router
from app.wiring import unwire_jobs, wire, wire_jobs

API_PREFIX = "/v1"

DESCRIPTION = """
Billing backend of ToRouter: prepaid USD balances topped up with Stripe, a double-entry ledger,
and the gateway's per-token usage API.

Money: top-up amounts are decimal strings with 2 decimals (`"20.00"`), balances with 6, always
with `"currency": "usd"`; the gateway API speaks integer `*_micros` (1 USD = 1,000,000).
Errors are RFC 9457 `application/problem+json` with a stable `code`.
"""

TAG_DESCRIPTIONS = {
    "purchase": "Top up the balance with Stripe.",
    "orders": "Order history, receipts, resume, cancel, sync.",
    "refunds": "Refund requests for paid orders.",
    "balance": "The user's balance and its transactions.",
    "credits": "Credit lots: promo codes, and credit that expires.",
    "payment methods": "Cards saved while paying.",
    "auto top-up": "Charge a saved card when the balance runs low.",
    "alerts": "Low-balance alerts and email notifications.",
    "gateway": "Usage debits and holds, for the gateway (service token).",
    "spend-limits": "Caps on what the account or an API key spends.",
    "usage": "Usage reports and the CSV export.",
    "webhooks": "Stripe event deliveries.",
    "admin": "Operator endpoints (admin role).",
    "operations": "Health, readiness and metrics.",
}
"""The document's tags, in its order, and what each groups."""
TAGS = [{"name": name, "description": text} for name, text in TAG_DESCRIPTIONS.items()]


def _operation_id(route: APIRoute) -> str:
    return route.name


def _jobs(app: FastAPI, settings: Settings) -> list[Job]:
    """The periodic jobs of this instance."""
    jobs: list[Job] = []
    jobs.append(
        Job(
            "expire_holds",
            settings.hold_expiry_interval_seconds,
            lambda: expire_holds(app.state.usage_store),
        )
    )
    jobs.append(
        Job(
            "expire_lots",
            settings.lot_expiry_interval_seconds,
            lambda: expire_lots(app.state.session_maker),
        )
    )
    jobs.append(
        Job(
            "reconcile",
            settings.reconcile_interval_seconds,
            lambda: run_reconciler(app.state.session_maker, app.state.stripe, settings),
        )
    )
    jobs.append(
        Job(
            "auto_topup",
            settings.auto_topup_interval_seconds,
            lambda: charge_auto_topups(app.state.session_maker, app.state.stripe, settings),
        )
    )
    jobs.append(
        Job(
            "credit_notices",
            settings.credit_notice_interval_seconds,
            lambda: send_credit_notices(app.state.session_maker, settings),
        )
    )
    jobs.append(
        Job(
            "notifications",
            settings.notify_interval_seconds,
            lambda: deliver_notifications(app.state.session_maker, app.state.notifier),
        )
    )
    return jobs


class BillingApp(FastAPI):
    """FastAPI for the portal, Stripe, operators and integrators, with the gateway's hot path
    (`/v1/internal/…`) handed to the lean `GatewayApp` before FastAPI's middleware and routing,
    and documented in the same OpenAPI document (`_document_gateway`)."""

    gateway: GatewayApp
    stripe_door: Any
    """`POST /v1/webhooks/stripe` inside the request middleware, without FastAPI's routing
    (`webhooks.router.answer_stripe_event`); a browser's request (with an `Origin`, which
    CORS answers) and every other method take FastAPI's route."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith(GATEWAY_PREFIX):
                await self.gateway(scope, receive, send)
                return
            if (
                path == STRIPE_WEBHOOK_PATH
                and scope["method"] == "POST"
                and not any(name == b"origin" for name, _ in scope["headers"])
            ):
                await self.stripe_door(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _answer_stripe_event(self, scope: Any, receive: Any, send: Any) -> None:
        # The objects read at each delivery, as the route's dependencies read them (tests
        # replace some).
        state = self.state
        await answer_stripe_event(
            state.session_maker,
            state.settings,
            state.stripe,
            self.exception_handlers,
            scope,
            receive,
            send,
        )


def _document_gateway(doc: dict[str, Any]) -> None:
    """Add the lean gateway app's operations (documented from its `OPERATIONS` table) to the
    document; `app.openapi` then makes their errors problems like every other operation's."""
    paths, schemas = openapi_paths()
    doc["paths"].update(paths)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(schemas)
    components["schemas"] = dict(sorted(components["schemas"].items()))
    components.setdefault("securitySchemes", {})["ServiceToken"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A gateway service token (`svc_…`).",
    }


def create_app(settings: Settings | None = None) -> BillingApp:
    """Build the application; nothing connects until the lifespan starts."""
    settings = settings or get_settings()
    wire()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One view of which host is the primary, for both pools (`app/primary.py`).
        primary = Primary(
            settings.database_url.get_secret_value(),
            attempt_timeout=settings.database_connect_timeout_seconds,
            probe_interval=settings.database_probe_interval_seconds,
        )
        app.state.primary = primary
        engine = create_engine(
            settings,
            statement_timeout_ms=settings.portal_statement_timeout_ms,
            primary=primary,
        )
        maker = create_session_maker(engine)
        app.state.engine = engine
        app.state.session_maker = maker
        app.state.jwt_verifier = JwtVerifier(settings)
        app.state.stripe = StripeGateway(settings)
        load_webhook_handlers()  # the handler table, built and frozen once
        app.state.rate_limiter = RateLimiter(settings)
        app.state.notifier = Notifier(settings)
        # The gateway's statements run on a pool of their own (`app/usage/repository.py`).
        store = await UsageStore.open(
            settings.database_url.get_secret_value(),
            max_size=settings.database_pool_size,
            primary=primary,
            combine_debits=settings.gateway_combine_debits,
            debits_in_flight=settings.gateway_debits_in_flight or None,
            holds_in_flight=settings.gateway_holds_in_flight,
        )
        primary.watch()
        # The gateway's tokens are read on the gateway's own connections (its asyncpg pool), and
        # kept fresh in the background.
        tokens = ServiceTokenVerifier(
            store.service_token,
            settings.service_token_cache_seconds,
            settings.service_token_cache_size,
        )
        tokens.start()
        app.state.service_token_verifier = tokens
        # One clock for the gateway's spend-limit windows and the portal's (tests move it).
        store.clock = lambda: app.state.clock()
        app.state.usage_store = store
        gateway.start(store, app.state.service_token_verifier, app.state.jwt_verifier)
        runner = JobRunner(_jobs(app, settings) if settings.jobs_enabled else [])
        if settings.jobs_enabled:
            # A debit that recorded an auto top-up starts its charge once it committed.
            wire_jobs(maker, app.state.stripe, settings)
        app.state.job_runner = runner  # `app.serve` stops it while requests drain
        runner.start()
        try:
            yield
        finally:
            if settings.jobs_enabled:
                unwire_jobs()
            await runner.stop()
            await after_commit_settled()
            await tokens.stop()
            await app.state.stripe.close()
            await app.state.notifier.close()
            await primary.stop()
            await store.close()
            await engine.dispose()

    gateway = GatewayApp(settings)
    app = BillingApp(
        title="ToRouter Billing",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.clock = utcnow
    app.gateway = gateway
    install_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
        expose_headers=["X-Request-ID", "Retry-After"],
        max_age=600,
    )
    # Outermost: every response, including CORS preflights and 500s, carries the request id.
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        stripe_deadline_seconds=settings.stripe_deadline_seconds,
    )
    # Every delivery answered 2xx logs its own line (`stripe_event_applied`, `…_duplicate`,
    # with the request id): the access line only for the others.
    app.stripe_door = RequestContextMiddleware(
        app._answer_stripe_event,
        max_body_bytes=settings.max_body_bytes,
        stripe_deadline_seconds=settings.stripe_deadline_seconds,
        log_successes=False,
    )

    app.include_router(ops_router)
    app.include_router(audit_router, prefix=API_PREFIX)
    app.include_router(orders_router, prefix=API_PREFIX)
    app.include_router(refunds_router, prefix=API_PREFIX)
    app.include_router(admin_refunds_router, prefix=API_PREFIX)
    app.include_router(admin_orders_router, prefix=API_PREFIX)
    app.include_router(balance_router, prefix=API_PREFIX)
    app.include_router(admin_adjustments_router, prefix=API_PREFIX)
    app.include_router(admin_ledger_router, prefix=API_PREFIX)
    app.include_router(purchase_router, prefix=API_PREFIX)
    app.include_router(payment_methods_router, prefix=API_PREFIX)
    app.include_router(billing_router, prefix=API_PREFIX)
    app.include_router(auto_topup_router, prefix=API_PREFIX)
    app.include_router(alerts_router, prefix=API_PREFIX)
    app.include_router(webhooks_router, prefix=API_PREFIX)
    app.include_router(admin_webhooks_router, prefix=API_PREFIX)
    app.include_router(limits_router, prefix=API_PREFIX)
    app.include_router(admin_limits_router, prefix=API_PREFIX)
    app.include_router(reports_router, prefix=API_PREFIX)
    app.include_router(admin_reports_router, prefix=API_PREFIX)
    app.include_router(promotions_router, prefix=API_PREFIX)
    app.include_router(admin_grants_router, prefix=API_PREFIX)
    app.include_router(admin_promo_codes_router, prefix=API_PREFIX)
    install_openapi(app, extend=[_document_gateway])
    return app


def app_factory() -> BillingApp:
    """Entry point for `uvicorn --factory app.main:app_factory`."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return create_app(settings)
