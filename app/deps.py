"""The process's shared objects as named dependencies: an endpoint asks for `settings:
SettingsDep` or `stripe: StripeDep` by annotation, never reads `request.app.state` itself.

They are built once by the lifespan in `app.main.create_app` (settings when the app is built)
and kept on `app.state`; these getters are the one place routers reach them. The request's
session is `app.db.SessionDep`, the caller `app.auth.CurrentUser`/`AdminUser`, and a route's rate
limit `app.rate_limits.rate_limited(scope)`: those providers read their own piece of `app.state`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.rate_limits import RateLimiter
from app.stripe_gateway import StripeGateway


def get_app_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def get_stripe(request: Request) -> StripeGateway:
    """The process's one `StripeGateway`."""
    stripe: StripeGateway = request.app.state.stripe
    return stripe


def get_session_maker(request: Request) -> async_sessionmaker[AsyncSession]:
    """Sessions of the app's engine, for services that commit before calling Stripe."""
    maker: async_sessionmaker[AsyncSession] = request.app.state.session_maker
    return maker


def get_engine(request: Request) -> AsyncEngine:
    """The app's database engine."""
    engine: AsyncEngine = request.app.state.engine
    return engine


def get_rate_limiter(request: Request) -> RateLimiter:
    """The per-user rate limits (for services that count a request only on some paths)."""
    limiter: RateLimiter = request.app.state.rate_limiter
    return limiter


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StripeDep = Annotated[StripeGateway, Depends(get_stripe)]
SessionMakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_session_maker)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]
