"""Gateway service tokens: `svc_` + 32 random bytes, stored only as SHA-256 hashes, each with
its scopes: `usage` (debits and batches), `holds` (reserve, capture, release), `balance:read`
(a user's balance). Each gateway operation needs one (`app.usage.router.OPERATIONS`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import new_id
from app.models.base import utcnow
from app.models.service_tokens import ServiceToken

log = structlog.get_logger(__name__)

TOKEN_PREFIX = "svc_"

SCOPES = ("usage", "holds", "balance:read")
"""Every scope a service token can carry; a token is created with all of them unless told."""


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def generate_token() -> str:
    """A new opaque token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class ServiceCaller:
    """A verified gateway."""

    token_id: str
    name: str
    scopes: frozenset[str] = frozenset(SCOPES)


def stored_scopes(scopes: Iterable[str]) -> str:
    """The stored form of a token's scopes (space-separated, in name order); ValueError for an
    unknown scope or none."""
    chosen = set(scopes)
    unknown = chosen - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s) {sorted(unknown)}; the scopes are {list(SCOPES)}")
    if not chosen:
        raise ValueError(f"a service token needs at least one scope of {list(SCOPES)}")
    return " ".join(sorted(chosen))


def parse_scopes(stored: str) -> frozenset[str]:
    """A token's scopes from their stored form."""
    return frozenset(stored.split())


async def create_service_token(
    session: AsyncSession, name: str, scopes: Iterable[str] = SCOPES
) -> tuple[ServiceToken, str]:
    """Store a new token's hash with its scopes; returns the row and the token, which is shown
    only now."""
    token = generate_token()
    row = ServiceToken(
        id=new_id("svt"), name=name, token_hash=hash_token(token), scopes=stored_scopes(scopes)
    )
    session.add(row)
    await session.flush()
    return row, token


async def list_service_tokens(session: AsyncSession) -> list[ServiceToken]:
    """All tokens, newest first."""
    result = await session.scalars(select(ServiceToken).order_by(ServiceToken.id.desc()))
    return list(result)


async def revoke_service_token(session: AsyncSession, token_id: str) -> bool:
    """Revoke by id; False when there is no such active token."""
    result = await session.execute(
        update(ServiceToken)
        .where(ServiceToken.id == token_id, ServiceToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .returning(ServiceToken.id)
    )
    return result.first() is not None


class TokenRecord(NamedTuple):
    """A stored token as its lookup reads it."""

    id: str
    name: str
    scopes: str
    revoked_at: datetime | None


TokenLookup = Callable[[str], Awaitable[TokenRecord | None]]
"""Reads the token with this SHA-256 hex digest. The gateway's own asyncpg pool does it
(`app.usage.repository.UsageStore.service_token`), so the portal's pool being exhausted (long
reports) cannot starve the gateway's authentication."""


def _caller(record: TokenRecord | None) -> ServiceCaller | None:
    if record is None or record.revoked_at is not None:
        return None
    return ServiceCaller(record.id, record.name, parse_scopes(record.scopes))


class ServiceTokenVerifier:
    """Looks tokens up by hash, caching answers for a few seconds: the gateway calls at a high
    rate, and a revocation takes effect within `BILLING_SERVICE_TOKEN_CACHE_SECONDS`.

    The cache is least-recently-used and bounded (`BILLING_SERVICE_TOKEN_CACHE_SIZE`): a flood of
    made-up tokens evicts other made-up tokens, not the gateway's, which is used all the time.

    Once `start()`ed, a background task re-reads the known (valid) tokens every half cache
    lifetime, so the gateway's requests find them fresh and only a token's first use (or an
    unknown token) looks one up on the request path. A refresh that fails leaves the entries to
    expire as usual: a revocation still takes effect within the cache lifetime."""

    def __init__(
        self,
        lookup: TokenLookup,
        cache_seconds: float,
        cache_size: int = 10_000,
    ) -> None:
        self._lookup = lookup
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, ServiceCaller | None]] = OrderedDict()
        self._refresher: asyncio.Task[None] | None = None

    async def verify(self, token: str) -> ServiceCaller | None:
        digest = hash_token(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(digest)
            return cached[1]
        caller = _caller(await self._lookup(digest))
        self._remember(digest, now, caller)
        return caller

    def _remember(self, digest: str, read_at: float, caller: ServiceCaller | None) -> None:
        # The entry lives from when it was read, not from when the answer arrived.
        if self._cache_seconds > 0:
            self._cache[digest] = (read_at + self._cache_seconds, caller)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    async def refresh(self) -> None:
        """Re-read every cached valid token (there are a few: the gateways'), keeping their
        entries fresh; made-up tokens are left to expire."""
        known = [digest for digest, (_, caller) in self._cache.items() if caller is not None]
        for digest in known:
            read_at = time.monotonic()
            caller = _caller(await self._lookup(digest))
            if digest in self._cache:  # not evicted meanwhile
                self._cache[digest] = (read_at + self._cache_seconds, caller)

    def start(self) -> None:
        """Refresh the cache in the background (nothing to do without a cache)."""
        if self._cache_seconds > 0 and self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="service-tokens")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cache_seconds / 2)
            try:
                await self.refresh()
            except Exception as exc:  # the database is away: entries expire, requests look up
                log.warning("service_token_refresh_failed", error=repr(exc))


def token_created_at(row: ServiceToken) -> datetime:
    """When the token was created (for listings)."""
    return row.created_at
