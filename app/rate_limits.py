"""Per-user rate limits on the portal's routes, built on the `limits` library.

Each scope (`purchase`, `resume`, `cancel`, `sync`, `payment_result`, `refund_request`,
`usage_report`, `promo_redeem`) has one
or more moving windows from the settings (`BILLING_RATE_LIMIT_<SCOPE>`, e.g. `10/minute;60/hour`),
counted per user: a request over any of them is a 429 `rate_limited` with `Retry-After`. The
windows live in `BILLING_RATE_LIMIT_STORAGE_URI`: process memory by default (right for one
instance), a shared storage such as Redis when several instances serve the same users.

The gateway's routes (`/v1/internal/*`) take no rate limit: the gateway is trusted and its
throughput is the product. The daily caps on Stripe objects and failed payment attempts are not
here: they are counted in the database (`app.purchase.service`), where they are exact across
instances and restarts.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal, get_args

from fastapi import Depends, Request
from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from app.auth.dependencies import get_current_user
from app.auth.jwt import Principal
from app.config import Settings
from app.errors import RateLimited
from app.metrics import observe_rate_limited
from app.openapi import mark_rate_limited

Scope = Literal[
    "purchase",
    "resume",
    "cancel",
    "sync",
    "payment_result",
    "refund_request",
    "usage_report",
    "promo_redeem",
]

SCOPES: tuple[Scope, ...] = get_args(Scope)

_WHAT: dict[Scope, str] = {
    "purchase": "purchases",
    "resume": "resumed payments",
    "cancel": "cancellations",
    "sync": "order syncs",
    "payment_result": "payment result checks",
    "refund_request": "refund requests",
    "usage_report": "usage reports",
    "promo_redeem": "promo code redemptions",
}


def _async_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else "async+" + uri


class RateLimiter:
    """The per-user windows of every scope, in one storage."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        storage: Any = storage_from_string(
            _async_uri(settings.rate_limit_storage_uri.get_secret_value())
        )
        self._strategy = MovingWindowRateLimiter(storage)
        self._rules: dict[Scope, list[RateLimitItem]] = {
            scope: parse_many(getattr(settings, f"rate_limit_{scope}")) for scope in SCOPES
        }

    async def hit(self, scope: Scope, user_id: str) -> None:
        """Count one request of `user_id` in `scope`; 429 `rate_limited` when a window is full
        (the refused request is not counted)."""
        if not self.enabled:
            return
        rules = self._rules[scope]
        for item in rules:
            if not await self._strategy.test(item, scope, user_id):
                stats = await self._strategy.get_window_stats(item, scope, user_id)
                retry_after = math.ceil(stats.reset_time - time.time())
                observe_rate_limited(scope)
                raise RateLimited(
                    f"Too many {_WHAT[scope]}: at most {item}; try again in "
                    f"{max(1, retry_after)} s.",
                    retry_after=retry_after,
                    limit=scope,
                )
        for item in rules:
            await self._strategy.hit(item, scope, user_id)


def rate_limited(scope: Scope) -> Any:
    """A route dependency: the caller (a portal user) spends one request of `scope`. The route
    declares the 429 in its OpenAPI operation by itself (`app.openapi`)."""

    async def check(request: Request, user: Principal = Depends(get_current_user)) -> None:
        limiter: RateLimiter = request.app.state.rate_limiter
        await limiter.hit(scope, user.user_id)

    check.__name__ = f"rate_limit_{scope}"
    return Depends(mark_rate_limited(check))
