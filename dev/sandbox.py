"""The local Stripe sandbox of `make run`, and `python -m dev.sandbox pay <order_id>`.

The sandbox is the test suite's Stripe peer (`python -m testing.stripe_peer`, a development-only
process that never ships in the image) on a free loopback port, with the service's webhook
endpoint registered under a generated `whsec_` secret. `make run` describes the running one in
`.sandbox/state.json`; `pay` reads it and stands in for Stripe.js or the hosted Checkout page:

    .venv/bin/python -m dev.sandbox pay ord_… [--decline]      (or: make sandbox-pay ORDER=ord_…)
"""

from __future__ import annotations

import argparse
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

import httpx

from app.config import Settings
from app.db import create_engine, create_session_maker, session_scope
from app.logs import configure_logging
from app.money import format_amount
from app.orders.repository import get_order
from app.payment_methods.repository import list_active

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_DIR = ROOT / ".sandbox"
SANDBOX_STATE = SANDBOX_DIR / "state.json"
"""Where the running sandbox is described, for `pay`."""
SANDBOX_SECRET_KEY = "sk_test_sandbox"
SANDBOX_PUBLISHABLE_KEY = "pk_test_sandbox"
READY_PREFIX = "STRIPE_PEER_READY "
PAY_COMMAND = "make sandbox-pay ORDER=<order_id> [DECLINE=1]"


def say(text: str) -> None:
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
                    "testing.stripe_peer",
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

    def write_state(self, database_url: str) -> None:
        """Describe this sandbox for `pay`."""
        SANDBOX_STATE.write_text(
            json.dumps({"api_base": self.url, "database_url": database_url}) + "\n"
        )

    def stop(self) -> None:
        SANDBOX_STATE.unlink(missing_ok=True)
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
    """Whether the Stripe peer can run here (a checkout with the dev dependencies)."""
    return (
        importlib.util.find_spec("localstripe") is not None
        and (ROOT / "testing" / "stripe_peer" / "__main__.py").exists()
    )


# -- `pay` --------------------------------------------------------------------------------------


def _sandbox_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(SANDBOX_STATE.read_text())
    except (OSError, ValueError):
        return None
    return state


async def pay(order_id: str, *, decline: bool) -> int:
    """Pay an order at the running sandbox as the customer would: its PaymentIntent (what
    Stripe.js does in the Elements popup) or its Checkout Session (the hosted page)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    state = _sandbox_state()
    if state is None:
        say("no sandbox is running: start one with `make run` (without Stripe keys)")
        return 2
    settings = Settings(environment="local", database_url=state["database_url"])
    engine = create_engine(settings)
    try:
        async with session_scope(create_session_maker(engine)) as session:
            order = await get_order(session, order_id)
    finally:
        await engine.dispose()
    if order is None:
        say(f"no order {order_id}")
        return 1
    card = "pm_card_chargeDeclined" if decline else "pm_card_visa"
    if order.mode == "checkout" and order.stripe_checkout_session_id:
        path = f"/_test/checkout/sessions/{order.stripe_checkout_session_id}/pay"
    elif order.mode != "checkout" and order.stripe_payment_intent_id:
        path = f"/_test/payment_intents/{order.stripe_payment_intent_id}/pay"
    else:
        say(f"order {order_id} has no Stripe payment yet (status {order.status})")
        return 1
    try:
        async with httpx.AsyncClient(base_url=state["api_base"], timeout=10) as http:
            response = await http.post(path, json={"payment_method": card})
    except httpx.HTTPError:
        say(f"the sandbox at {state['api_base']} does not answer; is `make run` still running?")
        return 2
    body = response.json()
    if response.status_code >= 400:
        say(f"the sandbox refused: {body.get('error', {}).get('message', body)}")
        return 1
    amount = f"{format_amount(order.amount_micros)} {order.currency.upper()}"
    if body["outcome"] == "declined":
        say(
            f"declined: {body['error']['message']} The order stays pending; pay it again or "
            "cancel it."
        )
        return 1
    say(
        f"paid {amount} for order {order_id} ({body['outcome']}); the sandbox delivers the "
        "webhook in a moment. Check GET /v1/balance or GET /v1/payments/result?order_id=…"
    )
    return 0


CARD_BEHAVIORS = ("declined", "authentication", "succeeds")


async def card_behavior(
    user_id: str, *, behavior: str, decline_code: str | None, payment_method_id: str | None
) -> int:
    """Make the user's saved card (the newest, or `payment_method_id`) behave so the next
    charge of it — an auto top-up — is declined (`decline_code`, e.g. `insufficient_funds`:
    soft; `expired_card`: hard), needs `authentication` (off-session: `authentication_required`),
    or `succeeds` again. The sandbox's `/_test/payment_methods/{id}/behavior`."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    state = _sandbox_state()
    if state is None:
        say("no sandbox is running: start one with `make run` (without Stripe keys)")
        return 2
    if payment_method_id is None:
        settings = Settings(environment="local", database_url=state["database_url"])
        engine = create_engine(settings)
        try:
            async with session_scope(create_session_maker(engine)) as session:
                cards = await list_active(session, user_id, after=None, limit=1)
        finally:
            await engine.dispose()
        if not cards:
            say(f'{user_id} has no saved card: buy with "save_card": true first')
            return 1
        payment_method_id = cards[0].id
    try:
        async with httpx.AsyncClient(base_url=state["api_base"], timeout=10) as http:
            response = await http.post(
                f"/_test/payment_methods/{payment_method_id}/behavior",
                json={"behavior": behavior, "decline_code": decline_code},
            )
    except httpx.HTTPError:
        say(f"the sandbox at {state['api_base']} does not answer; is `make run` still running?")
        return 2
    if response.status_code >= 400:
        say(f"the sandbox refused: {response.text}")
        return 1
    what = {
        "declined": f"is declined ({decline_code or 'generic_decline'})",
        "authentication": "needs authentication (off-session: authentication_required)",
        "succeeds": "succeeds",
    }[behavior]
    say(f"from now on charging {payment_method_id} {what}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dev.sandbox",
        description="Play the customer at the local Stripe sandbox started by `make run`.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    pay_parser = sub.add_parser("pay", help="pay an order's PaymentIntent or Checkout Session")
    pay_parser.add_argument("order_id")
    pay_parser.add_argument("--decline", action="store_true", help="with a card that is declined")
    card_parser = sub.add_parser(
        "card", help="make a saved card decline (or need authentication) the next time"
    )
    card_parser.add_argument("user_id", help="whose newest saved card (e.g. the demo user)")
    card_parser.add_argument("behavior", choices=CARD_BEHAVIORS)
    card_parser.add_argument(
        "--decline-code",
        default=None,
        help="with `declined`: insufficient_funds (soft, retried) or expired_card (hard, pauses)",
    )
    card_parser.add_argument("--payment-method", default=None, help="a pm_… id instead")
    args = parser.parse_args(argv)
    configure_logging(json=False)
    if args.action == "card":
        return asyncio.run(
            card_behavior(
                args.user_id,
                behavior=args.behavior,
                decline_code=args.decline_code,
                payment_method_id=args.payment_method,
            )
        )
    return asyncio.run(pay(args.order_id, decline=args.decline))


if __name__ == "__main__":
    raise SystemExit(main())
