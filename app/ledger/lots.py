"""Credit lots: every credit to a wallet is a lot, spent in one order and expiring exactly.

The order credit is spent in: soonest `expires_at` first (never-expiring last), then granted
before paid, then oldest first. A lot at or past its `expires_at` is never drawn (the available
balance leaves it out), and the expiry job posts its remainder out of the balance once.

Never-expiring paid lots come last in every draw, oldest first, so their remainders need not be
written by each debit: they are derived (`derived_remainders`) from the wallet's balance less
its tracked lots' remainders (`Account.tracked_micros`), allocated newest first, each capped by
what refunds and disputes left of it. Every other lot is *tracked*: its `remaining_micros` is
written by the debits that draw from it, under its row lock and its wallet's. A debit of a
wallet whose tracked sum is zero (most of them) touches no lot row.

Locks: a writer of lot rows locks them (in id order) before the wallet, like the spend limits;
a credit locks the wallet and inserts its lot.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger import lots_repository as repository
from app.ledger.repository import get_wallet
from app.ledger.service import Leg, Posting, PostResult, insufficient_balance, transfer
from app.ledger.service import post as post_accounts
from app.ledger.service import post_many as post_accounts_many
from app.models.base import utcnow
from app.models.ledger import CreditLot, LotKind, LotSource, Txn, lot_kind
from app.pagination import PageRequest, Slice, before_id, encode_cursor


@dataclass(slots=True)
class Credited:
    """A credit and its lot (None only for a replay of a credit posted before lots existed,
    whose amount is in the wallet's opening lot)."""

    posting: PostResult
    lot: CreditLot | None

    @property
    def replayed(self) -> bool:
        return self.posting.replayed


class LotRow(NamedTuple):
    """A tracked lot with a remainder, as a debit sees it once locked."""

    id: str
    user_id: str
    kind: str
    expires_at: datetime | None
    created_at: datetime
    remaining_micros: int


def draw_order(lot: LotRow) -> tuple[bool, datetime, str, datetime, str]:
    """`app.ledger.statements.LOT_ORDER`, in Python: soonest expiry first (never last), granted
    before paid, oldest first."""
    never = lot.expires_at is None
    return (never, lot.expires_at or lot.created_at, lot.kind, lot.created_at, lot.id)


class LiveLots:
    """One wallet's tracked lots as of `now`, for a plan that draws from them debit by debit
    (the gateway's batch): the live ones in draw order, and what the expired ones hold."""

    def __init__(self, lots: Sequence[LotRow], now: datetime) -> None:
        self.live = sorted(
            (lot for lot in lots if lot.expires_at is None or lot.expires_at > now),
            key=draw_order,
        )
        self.expired_micros = sum(
            lot.remaining_micros
            for lot in lots
            if lot.expires_at is not None and lot.expires_at <= now
        )

    def draw(self, amount_micros: int, remaining: MutableMapping[str, int]) -> tuple[int, int]:
        """Take up to `amount_micros` from the live lots in order, keeping each one's running
        remainder in `remaining` (by lot id); what they gave, and how much was granted."""
        left = amount_micros
        drawn = granted = 0
        for lot in self.live:
            if left == 0:
                break
            current = remaining.get(lot.id, lot.remaining_micros)
            take = min(current, left)
            if take == 0:
                continue
            remaining[lot.id] = current - take
            left -= take
            drawn += take
            if lot.kind == LotKind.GRANTED:
                granted += take
        return drawn, granted


def paid_expiry(expiry_days: int | None, bought_at: datetime) -> datetime | None:
    """When paid credit bought at `bought_at` expires (`Settings.paid_credit_expiry_days`;
    None: never)."""
    return bought_at + timedelta(days=expiry_days) if expiry_days is not None else None


def is_tracked(kind: LotKind, expires_at: datetime | None) -> bool:
    """Whether a lot's remainder is written by debits (all but never-expiring paid lots)."""
    return kind == LotKind.GRANTED or expires_at is not None


@dataclass(frozen=True, slots=True)
class LotCredit:
    """One credit of `credit_many` (the arguments of `credit`)."""

    txn: Txn
    user_id: str
    amount_micros: int
    source: LotSource
    account: str
    expires_at: datetime | None = None
    order_id: str | None = None
    passed_on: tuple[str, int] | None = None

    def posting(self) -> Posting:
        """The ledger posting of the credit: into the wallet from `account`, and what is passed
        on (`passed_on`) to its account."""
        if self.amount_micros <= 0:
            raise ValueError("a lot is a credit: amount_micros > 0")
        owed_to, owed = self.passed_on or (self.account, 0)
        legs = [
            Leg.wallet(self.user_id, self.amount_micros),
            Leg.account(self.account, -(self.amount_micros + owed)),
        ]
        if owed:
            legs.append(Leg.account(owed_to, owed))
        return Posting(self.txn, legs, self.user_id)


async def credit(
    session: AsyncSession,
    txn: Txn,
    *,
    user_id: str,
    amount_micros: int,
    source: LotSource,
    account: str,
    expires_at: datetime | None = None,
    order_id: str | None = None,
    passed_on: tuple[str, int] | None = None,
) -> Credited:
    """Post `amount_micros` (> 0) into the user's wallet from system `account` and create its
    lot, in the caller's transaction, once per `txn.reference` (a repeat answers the original
    posting and lot). A tracked lot repays a debt (a negative balance) first: its remainder is
    what is left of it after that. `passed_on` (system account, amount) is money `account`
    received on top of the credit that is owed elsewhere (a top-up's tax: `tax_payable`); it
    never reaches the wallet or the lot. A credit of one: `credit_many`."""
    (credited,) = await credit_many(
        session,
        [LotCredit(txn, user_id, amount_micros, source, account, expires_at, order_id, passed_on)],
    )
    return credited


async def credit_many(session: AsyncSession, credits: Sequence[LotCredit]) -> list[Credited]:
    """`credit` for several credits (distinct references) in their order: their postings in one
    `post_many` (one statement per table, wallets locked in user-id order) and their lots in one
    statement; each tracked lot counted in its wallet (and repaying its debt) in turn."""
    postings = [c.posting() for c in credits]
    results = await post_accounts_many(session, postings)
    lots: list[CreditLot | None] = []
    new_lots: list[dict[str, Any]] = []
    for c, posting in zip(credits, results, strict=True):
        if posting.replayed:
            lots.append(await repository.lot_by_reference(session, c.txn.reference))
            continue
        lot_kind_ = lot_kind(c.source)
        remaining = None
        if is_tracked(lot_kind_, c.expires_at):
            remaining = await repository.track_new_lot(session, c.user_id, c.amount_micros)
        columns = repository.new_lot_columns(
            user_id=c.user_id,
            source=c.source,
            kind=lot_kind_,
            amount_micros=c.amount_micros,
            remaining_micros=remaining,
            returned_micros=0,
            expires_at=c.expires_at,
            order_id=c.order_id,
            description=c.txn.description,
            reference=c.txn.reference,
            created_at=posting.transaction.created_at,
        )
        new_lots.append(columns)
        lots.append(CreditLot(**columns))
    await repository.insert_lots(session, new_lots)
    return [Credited(p, lot) for p, lot in zip(results, lots, strict=True)]


EXPIRY_ACCOUNTS = {LotKind.PAID: "breakage", LotKind.GRANTED: "promo_expired"}
"""Where an expired lot's remainder goes: paid credit to breakage, granted to promo expired."""


async def expire_lot(session: AsyncSession, lot_id: str, now: datetime) -> int:
    """Post what is left of an expired lot out of its wallet, once: the remainder read under
    the wallet's lock (then the lot's), to `EXPIRY_ACCOUNTS`, under reference
    `lot_expiry:<lot id>`; the lot keeps 0 and its `swept_at`. Returns the amount (0: nothing
    left, not due, or swept already)."""
    lot = await repository.lot_by_id(session, lot_id)
    if lot is None:
        return 0
    await repository.lock_wallet(session, lot.user_id)
    lot = await repository.lock_lot(session, lot_id)
    if (
        lot is None
        or lot.swept_at is not None
        or lot.remaining_micros is None
        or lot.expires_at is None
        or lot.expires_at > now
    ):
        return 0
    amount = lot.remaining_micros
    if amount > 0:
        await transfer(
            session,
            Txn(
                f"lot_expiry:{lot.id}",
                "credit_expiry",
                "Credit expired",
                details={"lot_id": lot.id, "expires_at": lot.expires_at.isoformat()},
            ),
            user_id=lot.user_id,
            amount_micros=-amount,
            account=EXPIRY_ACCOUNTS[LotKind(lot.kind)],
            require_available=False,
        )
        await repository.untrack(session, lot.user_id, amount)
    lot.remaining_micros = 0
    lot.swept_at = now
    return amount


async def due_lots(session: AsyncSession, now: datetime, limit: int) -> list[str]:
    """Lots at or past their expiry not swept yet (with a remainder, or drained: `expire_lot`
    closes those posting nothing), soonest first."""
    return await repository.due_lots(session, now, limit)


# Remainders of never-expiring paid lots, and refunds and disputes, which follow the lot.


def allocate(pool_micros: int, caps: Sequence[tuple[str, int]]) -> dict[str, int]:
    """The never-expiring paid lots' remainders: what the wallet holds beyond its tracked lots
    (`pool_micros`; below zero: a debt, nothing left), allocated newest first (`caps`, newest
    first: they are spent oldest first), each up to what refunds and disputes left of it."""
    left = max(pool_micros, 0)
    remainders = {}
    for lot_id, cap in caps:
        remainders[lot_id] = min(cap, left)
        left -= remainders[lot_id]
    return remainders


async def derived_remainders(session: AsyncSession, user_id: str) -> dict[str, int]:
    """The remainders of the user's never-expiring paid lots, by lot id (consistent under the
    wallet's lock, or as one snapshot)."""
    figures = await repository.wallet_figures(session, user_id)
    if figures is None:
        return {}
    balance, tracked = figures
    return allocate(balance - tracked, await repository.untracked_lots(session, user_id))


async def remainder(session: AsyncSession, lot: CreditLot) -> int:
    """What is left of a lot: tracked, its `remaining_micros`; else derived."""
    if lot.remaining_micros is not None:
        return lot.remaining_micros
    return (await derived_remainders(session, lot.user_id)).get(lot.id, 0)


@dataclass(frozen=True, slots=True)
class LotLeft:
    """What a refund of an order may take back of its lot (`micros`), and whether the lot is
    past its `expires_at` (then nothing: expired credit is not refundable)."""

    micros: int
    expired: bool = False


async def refundable(session: AsyncSession, order_ids: list[str]) -> dict[str, LotLeft]:
    """What is left, and not expired, of each of these orders' lots (an order with no lot, paid
    before lots existed, is absent): the most a refund of it may take back."""
    now = utcnow()
    found: dict[str, LotLeft] = {}
    derived: dict[str, dict[str, int]] = {}
    for lot in await repository.lots_of_orders(session, order_ids):
        assert lot.order_id is not None
        if lot.remaining_micros is not None:
            expired = lot.expires_at is not None and lot.expires_at <= now
            found[lot.order_id] = LotLeft(0 if expired else lot.remaining_micros, expired)
        else:
            if lot.user_id not in derived:
                derived[lot.user_id] = await derived_remainders(session, lot.user_id)
            found[lot.order_id] = LotLeft(derived[lot.user_id].get(lot.id, 0))
    return found


TaxOf = Callable[[int], int]
"""The tax that goes with a wallet amount of an order taxed on top (`app.orders.tax.tax_share`):
it moves on `tax_payable` in the same posting, never through the wallet or the lot."""


@dataclass(frozen=True, slots=True)
class OrderMove:
    """A refund's or dispute's posting for an order (`order_id`, its wallet `user_id`): money
    between the wallet and `account`, once per `reference`, as `kind`, `description` and
    `details` on the ledger transaction, with the tax share (`tax_of`) of an order taxed on
    top. `take_back` and `give_back` post it."""

    order_id: str
    user_id: str
    reference: str
    kind: str
    account: str
    description: str | None = None
    details: dict[str, Any] | None = None
    tax_of: TaxOf | None = None


async def _move(
    session: AsyncSession, move: OrderMove, amount_micros: int, *, require_available: bool = False
) -> PostResult:
    """`amount_micros` into (negative: out of) the wallet from `move.account`, with the tax
    share of an order taxed on top on `tax_payable` (same sign), the account taking both."""
    tax = (move.tax_of(abs(amount_micros)) if move.tax_of else 0) * (1 if amount_micros > 0 else -1)
    details = {**(move.details or {}), "tax_micros": tax} if tax else move.details
    legs = [
        Leg.wallet(move.user_id, amount_micros, require_available=require_available),
        Leg.account(move.account, -(amount_micros + tax)),
        *([Leg.account("tax_payable", tax)] if tax else []),
    ]
    txn = Txn(move.reference, move.kind, move.description, details=details)
    return await post_accounts(session, txn, legs, user_id=move.user_id)


async def take_back(
    session: AsyncSession, move: OrderMove, amount_micros: int, *, require_available: bool
) -> PostResult | None:
    """Take `amount_micros` (> 0) back out of the wallet for a refund or dispute of an order,
    once per `move.reference`, from that order's lot first:

    - in all, never more than the lot's amount less what was taken back from it before (a
      refund and a dispute of the same payment together never take back more than it paid);
    - a refund (`require_available`) takes only what is left of the lot, and is available, or
      nothing (402);
    - a dispute or a refund made at Stripe takes the lot's remainder and the shortfall out of
      the rest of the balance, even below zero (a debt the next credit repays first).

    None when nothing is left to take back (the lot was returned in full)."""
    if await repository.wallet_amount(session, move.reference) is not None:
        return await _move(session, move, -amount_micros)
    user_id = move.user_id
    await repository.lock_wallet(session, user_id)
    lot = await repository.lot_of_order(session, move.order_id, for_update=True)
    if lot is None:  # paid before lots: the balance is all there is to go by
        return await _move(session, move, -amount_micros, require_available=require_available)
    left = await remainder(session, lot)
    take = min(amount_micros, lot.amount_micros - lot.returned_micros)
    expired = lot.expires_at is not None and lot.expires_at <= utcnow()
    if require_available:
        # A refund asked for: credit that expired meanwhile is not refunded (it is breakage).
        left = 0 if expired else left
        wallet = await get_wallet(session, user_id)
        available = wallet.available_micros if wallet else 0
        if take < amount_micros or min(left, available) < amount_micros:
            raise insufficient_balance(min(left, available), amount_micros)
    if take <= 0:
        return None
    result = await _move(session, move, -take)
    if result.replayed:  # pragma: no cover - checked above, under the wallet's lock
        return result
    from_lot = min(take, left)
    if lot.remaining_micros is not None and from_lot:
        lot.remaining_micros -= from_lot
        await repository.untrack(session, user_id, from_lot)
    lot.returned_micros += take
    return result


async def give_back(
    session: AsyncSession, move: OrderMove, amount_micros: int, *, reverses: str
) -> PostResult | None:
    """Reverse a take-back (`reverses`: its reference) of up to `amount_micros`, once per
    `move.reference`: no more than it took, into the wallet, and to the order's lot as what was
    taken back from it. A tracked lot gets its remainder back the way a credit does (a debt
    first); a never-expiring paid lot by being owed less. None when the take-back moved
    nothing."""
    if await repository.wallet_amount(session, move.reference) is not None:
        return await _move(session, move, amount_micros)  # a replay
    user_id = move.user_id
    await repository.lock_wallet(session, user_id)
    lot = await repository.lot_of_order(session, move.order_id, for_update=True)
    if lot is None:  # paid before lots: as the balance had it
        return await _move(session, move, amount_micros)
    taken = await repository.wallet_amount(session, reverses)
    if taken is None:
        return None  # the take-back it reverses moved nothing
    give = min(amount_micros, -taken)
    if lot.swept_at is not None:
        # The lot expired meanwhile: what comes back of it has expired too, and goes where
        # the sweep sent the rest of it, not into the balance.
        description = f"{move.description} (credit expired)" if move.description else None
        legs = [
            Leg.account(move.account, -give),
            Leg.account(EXPIRY_ACCOUNTS[LotKind(lot.kind)], give),
        ]
        txn = Txn(move.reference, move.kind, description, details=move.details)
        return await post_accounts(session, txn, legs, user_id=user_id)
    result = await _move(session, move, give)
    if result.replayed:  # pragma: no cover - checked above, under the wallet's lock
        return result
    restored = min(give, lot.returned_micros)
    lot.returned_micros -= restored
    if lot.remaining_micros is not None and restored:
        lot.remaining_micros += await repository.track_new_lot(session, user_id, restored)
    return result


# The portal's views.

EXPIRING_SOON = timedelta(days=30)
"""`GET /v1/balance`'s `expiring_soon` counts what expires within this."""


async def list_credits(
    session: AsyncSession, user_id: str, status: str, page: PageRequest, now: datetime
) -> Slice[repository.CreditLine]:
    """A page of the user's lots of `status` (`repository.CREDIT_STATUSES`), newest first."""
    lines = await repository.list_credits(
        session,
        user_id,
        status=status,
        now=now,
        before=before_id(page.cursor),
        limit=page.limit + 1,
    )
    items = lines[: page.limit]
    more = len(lines) > page.limit
    return Slice(items, encode_cursor(items[-1].id) if more else None)


async def expiring(
    session: AsyncSession, user_id: str, now: datetime
) -> tuple[int, datetime | None]:
    """What expires within `EXPIRING_SOON`, and when the next lot with credit left expires."""
    return await repository.expiring(session, user_id, now, now + EXPIRING_SOON)
