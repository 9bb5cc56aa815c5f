"""All SQL of the ledger's posting path: transactions, entries and wallet updates (holds are
`holds_repository.py`, the user's statement `statement_repository.py`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    JSON,
    Table,
    bindparam,
    func,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import new_id
from app.ledger.statements import (
    LOT_DRAWS_UPDATE,
    drawn_wallet_update,
    expired_lots,
    locked_wallet,
    lot_draw_ctes,
)
from app.models.base import UTCDateTime, utcnow
from app.models.ledger import Account, LedgerTransaction


class WalletRow(NamedTuple):
    """A wallet's state as a statement returned it (a tuple: the gateway builds thousands)."""

    id: str
    user_id: str
    balance_micros: int
    held_micros: int
    watch_micros: int | None = None
    """`Account.watch_micros` as the ORM's statements return it, for `balance_changed()`; the
    gateway's own statements apply the watch in SQL and leave it None."""
    expired_micros: int = 0
    """What lots at or past their expiry still hold until the expiry job sweeps them: in the
    balance, not available (0 where the statement did not look)."""

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros - self.expired_micros


WALLET_COLUMNS = (
    Account.id,
    Account.user_id,
    Account.balance_micros,
    Account.held_micros,
    Account.watch_micros,
)


def wallet_row(row: Any) -> WalletRow:
    return WalletRow(row[0], row[1], row[2], row[3], row[4])


@dataclass(frozen=True, slots=True)
class Header:
    """A posting's transaction header, built once by `ledger.post()` and written by whichever
    path it takes (the row's id and time are the insert's)."""

    reference: str
    kind: str
    user_id: str | None
    description: str | None
    request_hash: str | None
    details: dict[str, Any] | None

    def columns(self, txn_id: str, created_at: datetime) -> dict[str, Any]:
        """The header's row, by column name."""
        return {
            "id": txn_id,
            "reference": self.reference,
            "kind": self.kind,
            "user_id": self.user_id,
            "description": self.description,
            "request_hash": self.request_hash,
            "details": self.details,
            "created_at": created_at,
        }


_TRANSACTIONS = cast(Table, LedgerTransaction.__table__)
_ACCOUNTS = cast(Table, Account.__table__)

# Built once, run with each posting's values as parameters: a Core statement on the table, no
# ORM bulk-DML layer, and no statement (nor its cache key) built again per posting (issue 22:
# building `insert(Model).values(...)` anew cost more CPU than running it).
_INSERT_HEADER = (
    insert(_TRANSACTIONS)
    .values(
        {name: bindparam(name) for name in ("id", "reference", "kind", "user_id", "description")}
        | {
            "request_hash": bindparam("request_hash"),
            # None is SQL NULL here, not a JSON null.
            "details": bindparam("details", type_=JSON(none_as_null=True)),
            "created_at": bindparam("created_at"),
        }
    )
    .on_conflict_do_nothing(index_elements=["reference"])
    .returning(_TRANSACTIONS.c.id)
)


async def insert_transaction(
    session: AsyncSession, header: Header, created_at: datetime | None = None
) -> str | None:
    """Insert the transaction header under a new id; None when the reference exists already
    (a replay)."""
    values = header.columns(new_id("txn"), created_at or utcnow())
    txn_id: str | None = (await session.execute(_INSERT_HEADER, values)).scalar_one_or_none()
    return txn_id


_INSERT_HEADERS = text(
    """
    INSERT INTO ledger_transactions
        (id, reference, kind, user_id, description, request_hash, details, created_at)
    SELECT h.id, h.reference, h.kind, h.user_id, h.description, h.request_hash, h.details,
           :created_at
    FROM unnest(CAST(:ids AS text[]), CAST(:references AS text[]), CAST(:kinds AS text[]),
                CAST(:user_ids AS text[]), CAST(:descriptions AS text[]),
                CAST(:request_hashes AS text[]), CAST(:details AS json[]))
         WITH ORDINALITY AS h(id, reference, kind, user_id, description, request_hash, details, n)
    ORDER BY h.n
    ON CONFLICT (reference) DO NOTHING
    RETURNING ledger_transactions.id
    """
).bindparams(bindparam("created_at", type_=UTCDateTime()))
"""The headers of several postings as arrays, in their order: one statement for a group of
any size, built once (`details` as JSON text, as the column's type writes it)."""


async def insert_transactions(
    session: AsyncSession, headers: list[Header], created_at: datetime
) -> list[str | None]:
    """Insert the postings' headers (distinct references, or a later one is a replay of the
    earlier) under new ids in ONE statement; each one's id, None where its reference exists
    already (a replay). One header goes through `insert_transaction`'s statement."""
    if len(headers) == 1:
        return [await insert_transaction(session, headers[0], created_at)]
    ids = [new_id("txn") for _ in headers]
    params = {
        "ids": ids,
        "references": [h.reference for h in headers],
        "kinds": [h.kind for h in headers],
        "user_ids": [h.user_id for h in headers],
        "descriptions": [h.description for h in headers],
        "request_hashes": [h.request_hash for h in headers],
        "details": [json.dumps(h.details) if h.details is not None else None for h in headers],
        "created_at": created_at,
    }
    inserted = set((await session.execute(_INSERT_HEADERS, params)).scalars())
    return [txn_id if txn_id in inserted else None for txn_id in ids]


async def get_transaction(session: AsyncSession, reference: str) -> LedgerTransaction | None:
    """The transaction with this reference."""
    return (
        await session.execute(
            select(LedgerTransaction).where(LedgerTransaction.reference == reference)
        )
    ).scalar_one_or_none()


_COVERED_DEBIT = text(
    f"""WITH locked AS (
    {locked_wallet(":user_id")}
), {lot_draw_ctes(":user_id", ":amount", ":now")}, wallet AS (
    {drawn_wallet_update(":user_id", ":amount")}
), lot_draws AS (
    {LOT_DRAWS_UPDATE}
)
SELECT id, user_id, balance_micros, held_micros, watch_micros, expired_micros FROM wallet"""
)


async def debit_wallet_if_available(
    session: AsyncSession, user_id: str, amount_micros: int, now: datetime
) -> WalletRow | None:
    """Take `amount_micros` (> 0) from the wallet, drawn from its lots in order, only if its
    available balance covers it (the rule of `app.ledger.statements`, as the gateway's debits
    apply it); None when it does not, when there is no wallet, or when a lot was credited after
    the statement's snapshot (the caller reads the wallet again)."""
    params = {"user_id": user_id, "amount": amount_micros, "now": now}
    row = (await session.execute(_COVERED_DEBIT, params)).first()
    return WalletRow(*row) if row is not None else None


_NEW_WALLET = insert(_ACCOUNTS).values(
    id=bindparam("id"),
    kind="wallet",
    user_id=bindparam("user_id"),
    balance_micros=bindparam("delta"),
    held_micros=0,
    created_at=bindparam("now"),
)
_UPSERT_WALLET = _NEW_WALLET.on_conflict_do_update(
    index_elements=["user_id"],
    set_={"balance_micros": _ACCOUNTS.c.balance_micros + _NEW_WALLET.excluded.balance_micros},
).returning(*(_ACCOUNTS.c[column.key] for column in WALLET_COLUMNS))
"""`apply_to_wallet`'s upsert, built once (as `_INSERT_HEADER`)."""


async def apply_to_wallet(session: AsyncSession, user_id: str, delta_micros: int) -> WalletRow:
    """Add `delta_micros` (either sign) to the wallet unconditionally, creating the wallet on
    first use, in one upsert."""
    params = {"id": new_id("acc"), "user_id": user_id, "delta": delta_micros, "now": utcnow()}
    return wallet_row((await session.execute(_UPSERT_WALLET, params)).one())


_UPSERT_WALLETS = text(
    """
    INSERT INTO accounts (id, kind, user_id, balance_micros, held_micros, tracked_micros,
                          created_at)
    SELECT w.id, 'wallet', w.user_id, w.delta, 0, 0, :now
    FROM unnest(CAST(:ids AS text[]), CAST(:user_ids AS text[]), CAST(:deltas AS bigint[]))
         AS w(id, user_id, delta)
    ORDER BY w.user_id
    ON CONFLICT (user_id) DO UPDATE
        SET balance_micros = accounts.balance_micros + excluded.balance_micros
    RETURNING accounts.id, accounts.user_id, accounts.balance_micros, accounts.held_micros,
              accounts.watch_micros
    """
).bindparams(bindparam("now", type_=UTCDateTime()))
"""`apply_to_wallet` for several wallets at once, as arrays, locked in user-id order (as every
posting takes them): one statement for a group of any size, built once."""


async def apply_to_wallets(session: AsyncSession, deltas: dict[str, int]) -> dict[str, WalletRow]:
    """Add each user's delta (either sign) to their wallet unconditionally, creating wallets on
    first use, in ONE upsert taking the rows' locks in user-id order; the wallets after it, by
    user id. One wallet goes through `apply_to_wallet`'s statement."""
    if len(deltas) == 1:
        ((user_id, delta),) = deltas.items()
        return {user_id: await apply_to_wallet(session, user_id, delta)}
    users = sorted(deltas)
    params = {
        "ids": [new_id("acc") for _ in users],
        "user_ids": users,
        "deltas": [deltas[user_id] for user_id in users],
        "now": utcnow(),
    }
    rows = (await session.execute(_UPSERT_WALLETS, params)).all()
    return {row[1]: wallet_row(row) for row in rows}


_WALLET = text(
    f"""SELECT id, user_id, balance_micros, held_micros, watch_micros,
       CASE WHEN tracked_micros = 0 THEN 0
            ELSE {expired_lots(":user_id", ":now")} END AS expired_micros
FROM accounts WHERE user_id = :user_id"""
)


async def get_wallet(
    session: AsyncSession, user_id: str, now: datetime | None = None
) -> WalletRow | None:
    """The wallet of a user, if it exists, with what its expired lots hold as of `now`."""
    params = {"user_id": user_id, "now": now or utcnow()}
    row = (await session.execute(_WALLET, params)).first()
    return WalletRow(*row) if row is not None else None


_INSERT_ENTRIES = text(
    """
    INSERT INTO ledger_entries
        (transaction_id, account_id, amount_micros, balance_after_micros, created_at)
    SELECT e.transaction_id, e.account_id, e.amount_micros, e.balance_after_micros, :created_at
    FROM unnest(CAST(:transaction_ids AS text[]), CAST(:account_ids AS text[]),
                CAST(:amounts AS bigint[]), CAST(:balances_after AS bigint[]))
         WITH ORDINALITY AS e(transaction_id, account_id, amount_micros, balance_after_micros, n)
    ORDER BY e.n
    """
).bindparams(bindparam("created_at", type_=UTCDateTime()))
"""A transaction's entries as arrays, in their order: one statement for any number of legs,
built once (a multi-row VALUES is a statement, and a cache key, of its own per call)."""


async def insert_entries_of(
    session: AsyncSession,
    created_at: datetime,
    entries: list[tuple[str, str, int, int | None]],
) -> None:
    """Insert the entries of one or more transactions, `(transaction id, account id, amount,
    balance after)` each, in ONE statement (each transaction's entries all in it, as the
    zero-sum trigger requires)."""
    params = {
        "transaction_ids": [txn_id for txn_id, _, _, _ in entries],
        "account_ids": [account_id for _, account_id, _, _ in entries],
        "amounts": [amount for _, _, amount, _ in entries],
        "balances_after": [balance for _, _, _, balance in entries],
        "created_at": created_at,
    }
    await session.execute(_INSERT_ENTRIES, params)


async def refresh_watch(session: AsyncSession, user_id: str) -> None:
    """Recompute the wallet's `watch_micros` from its alerts and auto top-up (creating the
    wallet, empty, if the user has none yet: its first debit must see the watch). Called
    whenever those settings change; a pause leaves it as it is (a watch too high only costs
    the lookup)."""
    from app.models.notifications import BalanceAlert
    from app.models.payment_methods import AutoTopupSettings

    thresholds = union_all(
        select(BalanceAlert.threshold_micros.label("t")).where(BalanceAlert.user_id == user_id),
        select(AutoTopupSettings.threshold_micros.label("t")).where(
            AutoTopupSettings.user_id == user_id, AutoTopupSettings.status == "active"
        ),
    ).subquery()
    watch = select(func.max(thresholds.c.t)).scalar_subquery()
    ins = insert(Account).values(
        id=new_id("acc"),
        kind="wallet",
        user_id=user_id,
        balance_micros=0,
        held_micros=0,
        watch_micros=watch,
        created_at=utcnow(),
    )
    await session.execute(
        ins.on_conflict_do_update(
            index_elements=["user_id"], set_={"watch_micros": ins.excluded.watch_micros}
        )
    )
