"""The wallet rules of the ledger as SQL, one form each, for every caller: `post()` runs them as
statements of their own (`app.ledger.repository`), the gateway embeds them as CTEs of its
one-statement chains (`app.usage.repository`). Placeholders are SQL expressions the caller
passes (`$3` for asyncpg, `:user_id` for SQLAlchemy's `text()`)."""

from __future__ import annotations

WALLET_RETURNING = "id, user_id, balance_micros, held_micros, watch_micros"
"""What a wallet UPDATE returns: `WalletRow`'s columns, by name."""


def covered_wallet_update(user: str, *, debit: str = "", hold: str = "", when: str = "") -> str:
    """The covered debit and the reserve: take `debit` from user `user`'s wallet balance, or add
    `hold` to its held amount, only if its available balance (`balance - held`) covers it, in
    ONE conditional UPDATE (no read-then-write): concurrent takers queue on the row lock and each
    re-checks the condition on the row as the one before it left it. `when` adds conditions
    (`AND …`) of the caller's statement."""
    amount = debit or hold
    if not amount or (debit and hold):
        raise ValueError("a covered wallet update takes a debit or a hold")
    column = "balance_micros" if debit else "held_micros"
    sign = "-" if debit else "+"
    return f"""UPDATE accounts SET {column} = {column} {sign} {amount}
    WHERE user_id = {user} AND balance_micros - held_micros >= {amount}{when}
    RETURNING {WALLET_RETURNING}"""
