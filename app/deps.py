"""The process's shared objects as named dependencies: an endpoint asks for `settings:
SettingsDep` or `stripe: StripeDep` by annotation, never reads `request.app.state` itself.

They are built once by the lifespan in `app.main.create_app` (settings when the app is built)
and kept on `app.state`; these getters are the one place routers reach them. The request's
session is `app.db.SessionDep`, the caller `app.auth.CurrentUser`/`AdminUser`, and a route's rate
limit `app.rate_limits.rate_limited(scope)`: those providers read their own piece of `app.state`.

Every getter is `async def`, also those that only read an attribute: FastAPI runs a plain `def`
dependency in its threadpool, a thread hop (and a wake-up of the event loop) per dependency per
request (`tests/test_dependencies.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, NamedTuple, Protocol

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.rate_limits import RateLimiter
from app.stripe_gateway import StripeGateway


def _from_state(name: str, doc: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that hands out `app.state.<name>` (set once in the lifespan)."""

    async def get(request: Request) -> Any:
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
get_clock = _from_state(
    "clock", "The app's clock, which the gateway's spend-limit windows read too (tests set it)."
)


async def get_now(clock: Annotated[Callable[[], datetime], Depends(get_clock)]) -> datetime:
    """The app's clock read once for the request."""
    return clock()


class GatewayStore(Protocol):
    """What a route outside the gateway may use of its store (`app.usage.repository.UsageStore`,
    started by the lifespan): its asyncpg pool, for the pool gauges. A protocol, so that this
    layer does not import the usage domain above it (the layers contract in pyproject.toml)."""

    @property
    def pool(self) -> Any: ...


async def get_usage_store(request: Request) -> GatewayStore | None:
    """The gateway's store; None before the lifespan has started it."""
    store: GatewayStore | None = getattr(request.app.state, "usage_store", None)
    return store


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StripeDep = Annotated[StripeGateway, Depends(get_stripe)]
SessionMakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_session_maker)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]
ClockDep = Annotated[Callable[[], datetime], Depends(get_clock)]
NowDep = Annotated[datetime, Depends(get_now)]
UsageStoreDep = Annotated[GatewayStore | None, Depends(get_usage_store)]


class StripeWork(NamedTuple):
    """What a service that calls Stripe takes first, in this order (`service.f(*work, …)`)."""

    maker: async_sessionmaker[AsyncSession]
    """Sessions to commit in before calling Stripe (no transaction stays open across a call)."""
    stripe: StripeGateway
    settings: Settings


async def _stripe_work(
    maker: SessionMakerDep, stripe: StripeDep, settings: SettingsDep
) -> StripeWork:
    return StripeWork(maker, stripe, settings)


StripeWorkDep = Annotated[StripeWork, Depends(_stripe_work)]
