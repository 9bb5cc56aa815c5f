"""`make run`: the service on 127.0.0.1:8000 with the embedded SQLite database, migrated first,
and a demo user's and admin's token printed so `/docs` can be tried at once.

Without `BILLING_STRIPE_SECRET_KEY`, a Stripe sandbox is started first: the test suite's Stripe
peer (`python -m tests.stripe_peer`, a development-only process that never ships in the image)
on a free loopback port, with the service's webhook endpoint registered under a generated
`whsec_` secret. The service is pointed at it, so a whole top-up works offline:
`POST /v1/purchase` from `/docs`, then `torouter-billing sandbox pay <order_id>` stands in for
Stripe.js or the hosted Checkout page, and the peer delivers the signed webhooks.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import secrets
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from app.config import get_settings

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_DIR = ROOT / ".sandbox"
SANDBOX_STATE = SANDBOX_DIR / "state.json"
"""Where the running sandbox is described, for `torouter-billing sandbox pay`."""
SANDBOX_SECRET_KEY = "sk_test_sandbox"
SANDBOX_PUBLISHABLE_KEY = "pk_test_sandbox"
READY_PREFIX = "STRIPE_PEER_READY "


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class Sandbox:
    """The Stripe peer as a child process; `stop()` ends it (it also exits with us)."""

    def __init__(self, *, webhook_url: str, startup_timeout: float = 30.0) -> None:
        self.webhook_url = webhook_url
        self.webhook_secret = "whsec_" + secrets.token_hex(24)
        self.url = ""
        SANDBOX_DIR.mkdir(exist_ok=True)
        self.log_path = SANDBOX_DIR / "stripe-peer.log"
        with self.log_path.open("w") as log_file:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.stripe_peer",
                    "--port",
                    "0",
                    "--webhook-url",
                    webhook_url,
                    "--webhook-secret",
                    self.webhook_secret,
                    "--parent-pid",
                    str(os.getpid()),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        self._wait_ready(startup_timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"the Stripe sandbox did not start; see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            ready, _, _ = select.select([self._proc.stdout], [], [], remaining)
            if ready:
                line = self._proc.stdout.readline()
                if line.startswith(READY_PREFIX):
                    self.url = line[len(READY_PREFIX) :].strip()
                    return

    def environment(self) -> dict[str, str]:
        """The settings that point the service at the sandbox."""
        return {
            "BILLING_STRIPE_SECRET_KEY": SANDBOX_SECRET_KEY,
            "BILLING_STRIPE_PUBLISHABLE_KEY": SANDBOX_PUBLISHABLE_KEY,
            "BILLING_STRIPE_WEBHOOK_SECRET": self.webhook_secret,
            "BILLING_STRIPE_API_BASE": self.url,
        }

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def sandbox_available() -> bool:
    """Whether the Stripe peer can run here (a development checkout with dev dependencies)."""
    return (
        importlib.util.find_spec("localstripe") is not None
        and (ROOT / "tests" / "stripe_peer" / "__main__.py").exists()
    )


def main() -> int:
    os.environ.setdefault("BILLING_ENVIRONMENT", "local")
    os.environ.setdefault("BILLING_LOG_JSON", "false")
    port = os.environ.get("PORT", "8000")
    settings = get_settings()
    sandbox: Sandbox | None = None
    if not settings.stripe_configured and sandbox_available():
        sandbox = Sandbox(webhook_url=f"http://127.0.0.1:{port}/v1/webhooks/stripe")
        os.environ.update(sandbox.environment())
        get_settings.cache_clear()
        settings = get_settings()
        SANDBOX_STATE.write_text(
            json.dumps({"api_base": sandbox.url, "database_url": settings.database_url}) + "\n"
        )
    from app.auth.jwt import mint_token
    from app.cli import main as cli_main

    user = mint_token(settings, "demo-user", email="demo@example.com")
    admin = mint_token(settings, "demo-admin", email="admin@example.com", admin=True)
    if sandbox is not None:
        stripe_line = (
            f"sandbox at {sandbox.url} (no real money; its log: {sandbox.log_path})\n"
            "              pay an order: .venv/bin/torouter-billing sandbox pay <order_id>"
            " [--decline]"
        )
    elif settings.stripe_configured:
        stripe_line = "configured (BILLING_STRIPE_SECRET_KEY)"
    else:
        stripe_line = "not configured, and no sandbox here: purchases answer 503"
    banner = (
        f"\nToRouter Billing (local)\n"
        f"  API docs:   http://127.0.0.1:{port}/docs\n"
        f"  Stripe:     {stripe_line}\n"
        f"  demo user:  Authorization: Bearer {user}\n"
        f"  demo admin: Authorization: Bearer {admin}\n"
    )
    try:
        if cli_main(["migrate"]) != 0:
            return 1
        _say(banner)
        return cli_main(["serve", "--host", "127.0.0.1", "--port", port, "--no-migrate"])
    finally:
        if sandbox is not None:
            sandbox.stop()
            SANDBOX_STATE.unlink(missing_ok=True)


# -- `torouter-billing sandbox pay` ----------------------------------------------------------------


def _sandbox_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(SANDBOX_STATE.read_text())
    except (OSError, ValueError):
        return None
    return state


async def sandbox_pay(order_id: str, *, decline: bool) -> int:
    """Pay an order at the running sandbox as the customer would: its PaymentIntent (what
    Stripe.js does in the Elements popup) or its Checkout Session (the hosted page)."""
    import httpx

    from app.config import Settings
    from app.db import create_engine, create_session_maker, session_scope
    from app.money import format_amount
    from app.orders.repository import get_order

    logging.getLogger("httpx").setLevel(logging.WARNING)
    state = _sandbox_state()
    if state is None:
        _say("no sandbox is running: start one with `make run` (without Stripe keys)")
        return 2
    settings = Settings(environment="local", database_url=state["database_url"])
    engine = create_engine(settings)
    try:
        async with session_scope(create_session_maker(engine)) as session:
            order = await get_order(session, order_id)
    finally:
        await engine.dispose()
    if order is None:
        _say(f"no order {order_id}")
        return 1
    card = "pm_card_chargeDeclined" if decline else "pm_card_visa"
    if order.mode == "checkout" and order.stripe_checkout_session_id:
        path = f"/_test/checkout/sessions/{order.stripe_checkout_session_id}/pay"
    elif order.mode == "elements" and order.stripe_payment_intent_id:
        path = f"/_test/payment_intents/{order.stripe_payment_intent_id}/pay"
    else:
        _say(f"order {order_id} has no Stripe payment yet (status {order.status})")
        return 1
    try:
        async with httpx.AsyncClient(base_url=state["api_base"], timeout=10) as http:
            response = await http.post(path, json={"payment_method": card})
    except httpx.HTTPError:
        _say(f"the sandbox at {state['api_base']} does not answer; is `make run` still running?")
        return 2
    body = response.json()
    if response.status_code >= 400:
        _say(f"the sandbox refused: {body.get('error', {}).get('message', body)}")
        return 1
    amount = f"{format_amount(order.amount_micros)} {order.currency.upper()}"
    if body["outcome"] == "declined":
        _say(
            f"declined: {body['error']['message']} The order stays pending; pay it again or "
            "cancel it."
        )
        return 1
    _say(
        f"paid {amount} for order {order_id} ({body['outcome']}); the sandbox delivers the "
        "webhook in a moment. Check GET /v1/balance or GET /v1/payments/result?order_id=…"
    )
    return 0


def cmd_sandbox_pay(order_id: str, *, decline: bool) -> int:
    """Entry point for the CLI."""
    return asyncio.run(sandbox_pay(order_id, decline=decline))


if __name__ == "__main__":
    raise SystemExit(main())
