"""`make run`: the service on 127.0.0.1:8000 (`PORT` to change it) on `BILLING_DATABASE_URL`, or
else on an embedded PostgreSQL whose data stays in `.pgdata/` (`dev.postgres`; stopped when this
ends), migrated first, and a demo user's and admin's token printed so `/docs` can be tried at
once.

Without `BILLING_STRIPE_SECRET_KEY`, the Stripe sandbox (`dev.sandbox`) is started first and the
service is pointed at it, so a whole top-up works offline: `POST /v1/purchase` from `/docs`, then
`python -m dev.sandbox pay <order_id>` stands in for Stripe.js or the hosted Checkout page, and
the sandbox delivers the signed webhooks.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import ValidationError

from app.auth.jwt import mint_token
from app.cli import main as cli_main
from app.cli import settings_refusal
from app.config import get_settings
from dev.postgres import RUN_DATA, EmbeddedPostgres, ensure_database
from dev.sandbox import PAY_COMMAND, Sandbox, sandbox_available, say

DATABASE = "billing"


def main() -> int:
    os.environ.setdefault("BILLING_ENVIRONMENT", "local")
    os.environ.setdefault("BILLING_LOG_JSON", "false")
    port = os.environ.get("PORT", "8000")
    try:
        configured = "database_url" in get_settings().model_fields_set
    except ValidationError as exc:
        say(settings_refusal(exc))
        return 2
    postgres: EmbeddedPostgres | None = None
    if configured:
        database_line = "BILLING_DATABASE_URL"
    else:
        postgres = EmbeddedPostgres(RUN_DATA)
        asyncio.run(ensure_database(postgres.start(), DATABASE))
        os.environ["BILLING_DATABASE_URL"] = postgres.url(DATABASE)
        database_line = (
            f"embedded PostgreSQL, data in {RUN_DATA} (kept across runs)\n"
            f"              to start afresh: stop `make run`, then rm -rf {RUN_DATA.name}"
        )
    try:
        return _run(port, database_line)
    finally:
        if postgres is not None:
            postgres.stop()


def _run(port: str, database_line: str) -> int:
    get_settings.cache_clear()
    settings = get_settings()
    sandbox: Sandbox | None = None
    if not settings.stripe_configured and sandbox_available():
        sandbox = Sandbox(webhook_url=f"http://127.0.0.1:{port}/v1/webhooks/stripe")
        os.environ.update(sandbox.environment())
        get_settings.cache_clear()
        settings = get_settings()
        sandbox.write_state(settings.database_url.get_secret_value())

    user = mint_token(settings, "demo-user", email="demo@example.com")
    admin = mint_token(settings, "demo-admin", email="admin@example.com", admin=True)
    if sandbox is not None:
        stripe_line = (
            f"sandbox at {sandbox.url} (no real money; its log: {sandbox.log_path})\n"
            f"              pay an order: {PAY_COMMAND}"
        )
    elif settings.stripe_configured:
        stripe_line = "configured (BILLING_STRIPE_SECRET_KEY)"
    else:
        stripe_line = "not configured, and no sandbox here: purchases answer 503"
    banner = (
        f"\nToRouter Billing (local)\n"
        f"  API docs:   http://127.0.0.1:{port}/docs\n"
        f"  database:   {database_line}\n"
        f"  Stripe:     {stripe_line}\n"
        f"  demo user:  Authorization: Bearer {user}\n"
        f"  demo admin: Authorization: Bearer {admin}\n"
    )
    try:
        if cli_main(["migrate"]) != 0:
            return 1
        say(banner)
        return cli_main(["serve", "--host", "127.0.0.1", "--port", port, "--no-migrate"])
    finally:
        if sandbox is not None:
            sandbox.stop()


if __name__ == "__main__":
    raise SystemExit(main())
