"""What the gateway's operations need from the database, and the shapes they exchange.

Two stores implement it: `repository.PostgresUsageStore` (production: driver-level statements on
an asyncpg pool, one round trip per debit, set-based batches) and `SessionUsageStore` (the
embedded SQLite default, through the ORM's ledger `post()` and `holds`). The service holds the
rules; a store only moves rows, raising the same errors for the same outcomes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.service_tokens import TokenRecord, orm_token_lookup
from app.db import session_scope
from app.errors import InsufficientBalance, SpendLimitExceeded
from app.ledger import holds, holds_repository, repository
from app.ledger.holds import HoldResult
from app.ledger.holds_repository import HoldCapture, HoldRequest, HoldRow
from app.ledger.repository import WalletRow
from app.ledger.service import transfer
from app.limits import repository as limits
from app.limits.periods import Windows
from app.limits.rules import check, tightest_remaining
from app.models.base import utcnow

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
    api_key_id: str | None = None
    """The gateway's id of the API key that spent: its key's spend limit applies too."""

    def detail(self, name: str) -> Any:
        """A usage detail (`model`, `input_tokens`, `output_tokens`), None when not reported."""
        return self.details.get(name) if self.details is not None else None


class Debited(NamedTuple):
    """A debit applied now, or found applied before (`replayed`, with the original's hash so
    the service can tell a replay from a reused id). `wallet` is the wallet right after the
    debit (for a replay, as it stands now; None when the user has no wallet)."""

    transaction_id: str
    request_hash: str | None
    replayed: bool
    wallet: WalletRow | None
    limit_remaining_micros: int | None = None
    """What the tightest spend limit leaves after the debit; None when none applies (or for a
    replay)."""


BatchOutcome = Debited | InsufficientBalance | SpendLimitExceeded


class UsageStore(Protocol):
    """The database side of the gateway's operations."""

    clock: Callable[[], datetime]
    """Now, for `created_at` and the spend limits' windows."""

    async def debit(self, debit: UsageDebit) -> Debited:
        """Apply a covered debit once; raises `InsufficientBalance` when it is not covered, and
        `SpendLimitExceeded` when a spend limit does not leave room for it."""
        ...

    async def debit_batch(self, debits: Sequence[UsageDebit]) -> list[BatchOutcome]:
        """Apply the debits in the order given, each on its own and as if one by one, in one
        database transaction; one outcome per debit, in the same order."""
        ...

    async def reserve(self, request: HoldRequest) -> HoldResult:
        """See `app.ledger.holds.reserve`; also subject to the spend limits of the user and
        `api_key_id`."""
        ...

    async def capture(self, capture: HoldCapture) -> HoldResult:
        """See `app.ledger.holds.capture`."""
        ...

    async def release(self, *, hold_id: str, resolution_hash: str) -> HoldResult:
        """See `app.ledger.holds.release`."""
        ...

    async def wallet(self, user_id: str) -> WalletRow | None:
        """A user's wallet as it stands."""
        ...

    async def service_token(self, digest: str) -> TokenRecord | None:
        """The service token with this hash (`app.auth.service_tokens.TokenLookup`), read on the
        gateway's own connections."""
        ...

    async def close(self) -> None:
        """Release what the store holds (connections)."""
        ...


class SessionUsageStore:
    """The gateway's operations through the ORM, one session transaction per call. SQLite runs
    one writer at a time (`BEGIN IMMEDIATE`), so a spend limit is checked and moved with plain
    reads and writes inside the wallet's transaction."""

    def __init__(
        self, maker: async_sessionmaker[AsyncSession], clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._maker = maker
        self.clock = clock
        """Now: what the spend limits' windows are read from (tests move it)."""
        self._token_lookup = orm_token_lookup(maker)

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
                except (InsufficientBalance, SpendLimitExceeded) as refused:
                    outcomes.append(refused)
        return outcomes

    async def _debit(self, session: AsyncSession, debit: UsageDebit) -> Debited:
        reference = usage_reference(debit.request_id)
        now = self.clock()
        windows = Windows.at(now)
        counters = await limits.locked_counters(session, debit.user_id, debit.api_key_id)
        # A replay answers the original whatever the limits say now, as on PostgreSQL.
        if counters and await repository.get_transaction(session, reference) is None:
            check(counters, debit.amount_micros, windows)
        result = await transfer(
            session,
            reference=reference,
            kind=USAGE_KIND,
            user_id=debit.user_id,
            amount_micros=-debit.amount_micros,
            account="usage",
            description=USAGE_DESCRIPTION,
            request_hash=debit.request_hash,
            details=debit.details,
        )
        wallet = result.wallet(debit.user_id)
        remaining = None
        if not result.replayed:
            remaining = tightest_remaining(
                await limits.charge(session, counters, debit.amount_micros, windows)
            )
            assert wallet is not None
            await limits.insert_usage_record(
                session,
                user_id=debit.user_id,
                transaction_id=result.transaction.id,
                request_id=debit.request_id,
                api_key_id=debit.api_key_id,
                model=debit.detail("model"),
                input_tokens=debit.detail("input_tokens"),
                output_tokens=debit.detail("output_tokens"),
                amount_micros=debit.amount_micros,
                balance_after_micros=wallet.balance_micros,
                now=now,
            )
        return Debited(
            transaction_id=result.transaction.id,
            request_hash=result.transaction.request_hash,
            replayed=result.replayed,
            wallet=wallet,
            limit_remaining_micros=remaining,
        )

    async def reserve(self, request: HoldRequest) -> HoldResult:
        hold_id, api_key_id = request.hold_id, request.api_key_id
        now = self.clock()
        windows = Windows.at(now)
        async with session_scope(self._maker) as session:
            counters = await limits.locked_counters(session, request.user_id, api_key_id)
            if counters and await holds_repository.get_hold(session, hold_id) is None:
                check(counters, request.amount_micros, windows)
            result = await holds.reserve(session, request, now)
            if result.replayed:
                return result
            if api_key_id is not None:
                await limits.set_hold_key(session, hold_id, api_key_id)
            remaining = await limits.charge(session, counters, request.amount_micros, windows)
            return result._replace(limit_remaining_micros=tightest_remaining(remaining))

    async def capture(self, capture: HoldCapture) -> HoldResult:
        hold_id, amount_micros, _, details, _ = capture
        now = self.clock()
        async with session_scope(self._maker) as session:
            result = await holds.capture(session, capture, now)
            if result.replayed:
                return result
            hold = result.hold
            api_key_id = await limits.hold_key(session, hold_id)
            remaining = await self._settle(
                session, hold, api_key_id, amount_micros - hold.amount_micros, now
            )
            if amount_micros > 0:
                posted = await repository.get_transaction(session, f"hold:{hold_id}")
                assert posted is not None
                usage = details or {}
                await limits.insert_usage_record(
                    session,
                    user_id=hold.user_id,
                    transaction_id=posted.id,
                    request_id=hold_id,
                    api_key_id=api_key_id,
                    model=usage.get("model"),
                    input_tokens=usage.get("input_tokens"),
                    output_tokens=usage.get("output_tokens"),
                    amount_micros=amount_micros,
                    balance_after_micros=result.wallet.balance_micros,
                    now=now,
                )
            return result._replace(limit_remaining_micros=remaining)

    async def release(self, *, hold_id: str, resolution_hash: str) -> HoldResult:
        now = self.clock()
        async with session_scope(self._maker) as session:
            result = await holds.release(
                session, hold_id=hold_id, resolution_hash=resolution_hash, now=now
            )
            if result.replayed:
                return result
            hold = result.hold
            api_key_id = await limits.hold_key(session, hold_id)
            remaining = await self._settle(session, hold, api_key_id, -hold.amount_micros, now)
            return result._replace(limit_remaining_micros=remaining)

    @staticmethod
    async def _settle(
        session: AsyncSession,
        hold: HoldRow,
        api_key_id: str | None,
        delta_micros: int,
        now: datetime,
    ) -> int | None:
        counters = await limits.locked_counters(session, hold.user_id, api_key_id)
        remaining = await limits.settle_hold(
            session, counters, hold.created_at, delta_micros, Windows.at(now)
        )
        return tightest_remaining(remaining)

    async def wallet(self, user_id: str) -> WalletRow | None:
        async with self._maker() as session:
            return await repository.get_wallet(session, user_id)

    async def service_token(self, digest: str) -> TokenRecord | None:
        return await self._token_lookup(digest)

    async def close(self) -> None:
        return None
