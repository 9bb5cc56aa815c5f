"""The process's shared objects as named dependencies: an endpoint asks for `settings:
SettingsDep` or `stripe: StripeDep` by annotation, never reads `request.app.state` itself.

They are built once by the lifespan in `app.main.create_app` (settings when the app is built)
and kept on `app.state`; these getters are the one place routers reach them. The request's
session is `app.db.SessionDep`, the caller `app.auth.CurrentUser`/`AdminUser`, and a route's rate
limit `app.rate_limits.rate_limited(scope)`: those providers read their own piece of `app.state`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, NamedTuple

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.rate_limits import RateLimiter
from app.stripe_gateway import StripeGateway


def _from_state(name: str, doc: str) -> Callable[[Request], Any]:
    """A dependency that hands out `app.state.<name>` (set once in the lifespan)."""

    def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    get.__name__ = f"get_{name}"
    get.__doc__ = doc
    return get


get_app_settings = _from_state("settings", "The settings the app was built with.")
get_stripe = _from_state("stripe", "The process's one `StripeGateway`.")
get_session_maker = _from_state(
    "session_maker", "Sessions of the app's engine, for services that commit before calling Stripe."
)
get_engine = _from_state("engine", "The app's database engine.")
get_rate_limiter = _from_state(
    "rate_limiter",
    "The per-user rate limits (for services that count a request only on some paths).",
)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StripeDep = Annotated[StripeGateway, Depends(get_stripe)]
SessionMakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_session_maker)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]


class StripeWork(NamedTuple):
    """What a service that calls Stripe takes first, in this order (`service.f(*work, …)`)."""

    maker: async_sessionmaker[AsyncSession]
    """Sessions to commit in before calling Stripe (no transaction stays open across a call)."""
    stripe: StripeGateway
    settings: Settings


def _stripe_work(maker: SessionMakerDep, stripe: StripeDep, settings: SettingsDep) -> StripeWork:
    return StripeWork(maker, stripe, settings)


StripeWorkDep = Annotated[StripeWork, Depends(_stripe_work)]
