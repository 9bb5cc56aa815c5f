"""Gateway service tokens: `svc_` + 32 random bytes, stored only as SHA-256 hashes, each with
its scopes: `usage` (debits and batches), `holds` (reserve, capture, release), `balance:read`
(a user's balance). Each gateway operation needs one (`app.usage.router.OPERATIONS`)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.ids import new_id
from app.models.base import utcnow
from app.models.service_tokens import ServiceToken

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


# Built once: every cache miss of the gateway's hot path runs it.
_BY_HASH = select(
    ServiceToken.id, ServiceToken.name, ServiceToken.scopes, ServiceToken.revoked_at
).where(ServiceToken.token_hash == bindparam("digest"))


class ServiceTokenVerifier:
    """Looks tokens up by hash, caching answers for a few seconds: the gateway calls at a high
    rate, and a revocation takes effect within `BILLING_SERVICE_TOKEN_CACHE_SECONDS`.

    The cache is least-recently-used and bounded (`BILLING_SERVICE_TOKEN_CACHE_SIZE`): a flood of
    made-up tokens evicts other made-up tokens, not the gateway's, which is used all the time."""

    def __init__(
        self,
        maker: async_sessionmaker[AsyncSession],
        cache_seconds: float,
        cache_size: int = 10_000,
    ) -> None:
        self._maker = maker
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, ServiceCaller | None]] = OrderedDict()

    async def verify(self, token: str) -> ServiceCaller | None:
        digest = hash_token(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(digest)
            return cached[1]
        async with self._maker() as session:
            row = (await session.execute(_BY_HASH, {"digest": digest})).first()
        caller = (
            None
            if row is None or row.revoked_at is not None
            else ServiceCaller(row.id, row.name, parse_scopes(row.scopes))
        )
        if self._cache_seconds > 0:
            self._cache[digest] = (now + self._cache_seconds, caller)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return caller


def token_created_at(row: ServiceToken) -> datetime:
    """When the token was created (for listings)."""
    return row.created_at
