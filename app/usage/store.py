"""What the gateway's operations need from the database, and the shapes they exchange.

Two stores implement it: `repository.PostgresUsageStore` (production: driver-level statements on
an asyncpg pool, one round trip per debit, set-based batches) and `SessionUsageStore` (the
embedded SQLite default, through the ORM's ledger `post()` and `holds`). The service holds the
rules; a store only moves rows, raising the same errors for the same outcomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.errors import InsufficientBalance
from app.ledger import holds, repository
from app.ledger.holds import HoldResult
from app.ledger.repository import WalletRow
from app.ledger.service import transfer

USAGE_KIND = "usage"
USAGE_DESCRIPTION = "Usage"


def usage_reference(request_id: str) -> str:
    """The ledger reference of a gateway debit: its idempotency key."""
    return f"usage:{request_id}"


class UsageDebit(NamedTuple):
    """One usage debit to apply once per `request_id`."""

    user_id: str
    request_id: str
    amount_micros: int
    request_hash: str
    details: dict[str, Any] | None


class Debited(NamedTuple):
    """A debit applied now, or found applied before (`replayed`, with the original's hash so
    the service can tell a replay from a reused id). `wallet` is the wallet right after the
    debit (for a replay, as it stands now; None when the user has no wallet)."""

    transaction_id: str
    request_hash: str | None
    replayed: bool
    wallet: WalletRow | None


BatchOutcome = Debited | InsufficientBalance


class UsageStore(Protocol):
    """The database side of the gateway's operations."""

    async def debit(self, debit: UsageDebit) -> Debited:
        """Apply a covered debit once; raises `InsufficientBalance` when it is not covered."""
        ...

    async def debit_batch(self, debits: Sequence[UsageDebit]) -> list[BatchOutcome]:
        """Apply the debits in the order given, each on its own and as if one by one, in one
        database transaction; one outcome per debit, in the same order."""
        ...

    async def reserve(
        self,
        *,
        user_id: str,
        hold_id: str,
        amount_micros: int,
        ttl_seconds: int,
        request_hash: str,
        details: dict[str, Any] | None,
    ) -> HoldResult:
        """See `app.ledger.holds.reserve`."""
        ...

    async def capture(
        self,
        *,
        hold_id: str,
        amount_micros: int,
        resolution_hash: str,
        details: dict[str, Any] | None,
    ) -> HoldResult:
        """See `app.ledger.holds.capture`."""
        ...

    async def release(self, *, hold_id: str, resolution_hash: str) -> HoldResult:
        """See `app.ledger.holds.release`."""
        ...

    async def wallet(self, user_id: str) -> WalletRow | None:
        """A user's wallet as it stands."""
        ...

    async def close(self) -> None:
        """Release what the store holds (connections)."""
        ...


class SessionUsageStore:
    """The gateway's operations through the ORM, one session transaction per call."""

    def __init__(self, maker: async_sessionmaker[AsyncSession]) -> None:
        self._maker = maker

    async def debit(self, debit: UsageDebit) -> Debited:
        async with session_scope(self._maker) as session:
            return await self._debit(session, debit)

    async def debit_batch(self, debits: Sequence[UsageDebit]) -> list[BatchOutcome]:
        outcomes: list[BatchOutcome] = []
        async with session_scope(self._maker) as session:
            for debit in debits:
                try:
                    async with session.begin_nested():
                        outcomes.append(await self._debit(session, debit))
                except InsufficientBalance as refused:
                    outcomes.append(refused)
        return outcomes

    @staticmethod
    async def _debit(session: AsyncSession, debit: UsageDebit) -> Debited:
        result = await transfer(
            session,
            reference=usage_reference(debit.request_id),
            kind=USAGE_KIND,
            user_id=debit.user_id,
            amount_micros=-debit.amount_micros,
            account="usage",
            description=USAGE_DESCRIPTION,
            request_hash=debit.request_hash,
            details=debit.details,
        )
        return Debited(
            transaction_id=result.transaction.id,
            request_hash=result.transaction.request_hash,
            replayed=result.replayed,
            wallet=result.wallet(debit.user_id),
        )

    async def reserve(
        self,
        *,
        user_id: str,
        hold_id: str,
        amount_micros: int,
        ttl_seconds: int,
        request_hash: str,
        details: dict[str, Any] | None,
    ) -> HoldResult:
        async with session_scope(self._maker) as session:
            return await holds.reserve(
                session,
                user_id=user_id,
                hold_id=hold_id,
                amount_micros=amount_micros,
                ttl_seconds=ttl_seconds,
                request_hash=request_hash,
                details=details,
            )

    async def capture(
        self,
        *,
        hold_id: str,
        amount_micros: int,
        resolution_hash: str,
        details: dict[str, Any] | None,
    ) -> HoldResult:
        async with session_scope(self._maker) as session:
            return await holds.capture(
                session,
                hold_id=hold_id,
                amount_micros=amount_micros,
                resolution_hash=resolution_hash,
                details=details,
            )

    async def release(self, *, hold_id: str, resolution_hash: str) -> HoldResult:
        async with session_scope(self._maker) as session:
            return await holds.release(session, hold_id=hold_id, resolution_hash=resolution_hash)

    async def wallet(self, user_id: str) -> WalletRow | None:
        async with self._maker() as session:
            return await repository.get_wallet(session, user_id)

    async def close(self) -> None:
        return None
