"""One deadline for all the Stripe work of a request (or of a job run).

A *budget* is opened once per unit of work: `RequestContextMiddleware` opens one per HTTP request
(`BILLING_STRIPE_DEADLINE_SECONDS`, default 12 s) and `JobRunner` one per job run. Its clock
starts at the first Stripe call made inside it, so time spent waiting for the database does not
count. Every `StripeGateway` call then

- caps each HTTP attempt's timeout by what remains (`DeadlineAIOHTTPClient`),
- stops the SDK's retries (and shortens its backoff) when too little remains,
- refuses to start once nothing remains,

and raises `StripeDeadlineExceeded` (503 `payment_provider_unavailable`, `Retry-After`), an
`StripeOutcomeUnknown`: a call cut off by the deadline may have happened, so the caller treats it
like a timeout and repeats it later under the same idempotency key.

Budgets nest: an inner `stripe_budget()` can only shorten the outer one (a service cannot give
itself more time than its request has). A call made with no budget open (the CLI, a test calling
the gateway directly) gets a budget of its own of the configured length.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import Context, ContextVar, copy_context
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
import stripe

from app.config import Settings


@dataclass
class StripeBudget:
    """The time allowed for Stripe work; the clock starts at the first call (`start()`)."""

    seconds: float
    deadline: float | None = None
    """`time.monotonic()` value after which no Stripe call may run (None until started)."""
    parent: StripeBudget | None = None

    def start(self) -> float:
        """Start the clock if it has not started; return the deadline."""
        if self.deadline is None:
            own = time.monotonic() + self.seconds
            self.deadline = own if self.parent is None else min(own, self.parent.start())
        return self.deadline

    def remaining(self) -> float:
        """Seconds left (negative once past), starting the clock if needed."""
        return self.start() - time.monotonic()


DEFAULT_DEADLINE_SECONDS = 12.0
"""`Settings.stripe_deadline_seconds`'s default."""

_BUDGET: ContextVar[StripeBudget | None] = ContextVar("stripe_budget", default=None)


def current_budget() -> StripeBudget | None:
    """The budget of the request or job run this code runs in, if any."""
    return _BUDGET.get()


def without_budget() -> Context:
    """A copy of the current context (request id and all) with no Stripe budget: for a task
    that outlives the request that starts it, whose Stripe calls must not spend what is left of
    the request's budget (each call still has its own, `BILLING_STRIPE_DEADLINE_SECONDS`)."""
    context = copy_context()
    context.run(_BUDGET.set, None)
    return context


@contextmanager
def stripe_budget(seconds: float) -> Iterator[StripeBudget]:
    """Scope the Stripe work inside to `seconds` (and to any enclosing budget)."""
    budget = StripeBudget(seconds, parent=_BUDGET.get())
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


MIN_ATTEMPT_SECONDS = 0.05
"""An attempt with less time than this left is not started (it could not get an answer)."""


class DeadlineAIOHTTPClient(stripe.AIOHTTPClient):
    """The SDK's async aiohttp transport, bounded by the current budget: each attempt's timeout
    is at most what remains, a retry (and its backoff sleep) happens only if time remains after
    the sleep, and a sleep never outlasts the deadline. aiohttp rather than the SDK's default
    HTTPX: a GET of a PaymentIntent costs ~4x less client CPU (~1,040 -> ~270 µs per request and
    answer, measured in one process on loopback), and every credit from an event reads one
    after its commit (issue 22)."""

    def _get_request_args_kwargs(  # type: ignore[no-untyped-def]
        self, method: str, url: str, headers, post_data
    ):
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        configured = kwargs.get("timeout")
        seconds = float(configured) if isinstance(configured, int | float) else None
        budget = _BUDGET.get()
        if budget is not None:
            left = max(MIN_ATTEMPT_SECONDS, budget.remaining())
            seconds = left if seconds is None else min(seconds, left)
        # aiohttp takes a ClientTimeout, never a number; `total` covers the answer's body too.
        kwargs["timeout"] = aiohttp.ClientTimeout(total=seconds)
        return args, kwargs

    async def request_async(  # type: ignore[no-untyped-def]
        self, method: str, url: str, headers, post_data=None
    ):
        content, status, response_headers = await self.request_stream_async(
            method, url, headers, post_data=post_data
        )
        try:
            body = await content.read()
        except Exception as exc:  # cut off or dropped while the answer was read
            self._handle_request_error(exc)  # the SDK's connection error (retried)
        return body, status, response_headers

    def _should_retry(  # type: ignore[no-untyped-def]
        self, response, api_connection_error, num_retries, max_network_retries
    ) -> bool:
        budget = _BUDGET.get()
        if budget is not None:
            # The next attempt starts after at least the SDK's initial backoff.
            if budget.remaining() < stripe.HTTPClient.INITIAL_DELAY + MIN_ATTEMPT_SECONDS:
                return False
        return bool(
            super()._should_retry(response, api_connection_error, num_retries, max_network_retries)
        )

    def _sleep_time_seconds(self, num_retries: int) -> float:
        sleep = float(super()._sleep_time_seconds(num_retries))
        budget = _BUDGET.get()
        if budget is not None:
            sleep = max(0.0, min(sleep, budget.remaining() - MIN_ATTEMPT_SECONDS))
        return sleep


def stripe_call_bound(settings: Settings) -> timedelta:
    """The longest one Stripe call can take (every attempt timing out, plus the SDK's backoff):
    an order younger than this may still have its creation call in flight."""
    attempts = settings.stripe_max_network_retries + 1
    return timedelta(seconds=attempts * settings.stripe_timeout_seconds + 5)
