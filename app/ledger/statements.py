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


LOT_ORDER = "expires_at ASC NULLS LAST, kind, created_at, id"
"""The order credit is spent in (`app.ledger.lots`): soonest expiry first, never last; then
granted before paid (`'granted' < 'paid'`); then oldest first. Never-expiring paid lots (not
tracked) come after all of these, as the balance less the tracked remainders."""


def locked_wallet(user: str, *, when: str = "") -> str:
    """The `locked` CTE of a debit over lots: the wallet, if it tracks lots, locked FIRST
    (before its lots: every writer of lots takes the wallet's lock, then the lots'), as it
    stands once locked (READ COMMITTED re-reads a locked row, where an UPDATE's own conditions
    would read the statement's snapshot, older than the lots it locked)."""
    return f"""SELECT id, balance_micros, held_micros, tracked_micros FROM accounts
    WHERE user_id = {user} AND tracked_micros <> 0{when} FOR UPDATE"""


def lot_live(now: str) -> str:
    """Whether a lot (its columns unqualified) can still be drawn at `now`: not at or past its
    `expires_at`."""
    return f"(expires_at IS NULL OR expires_at > {now})"


def lot_draw(amount: str, *, per: str = "") -> str:
    """THE lot-draw rule, as a column of rows of lots (`id`, `kind`, `expires_at`, `created_at`,
    `remaining_micros`, `live` unqualified): what a draw of `amount` takes from each lot,
    filling the live lots in `LOT_ORDER` (none from a lot that is not live); `per` partitions
    the lots (by wallet: `amount` is then that wallet's, as a column). Drawing amounts one by
    one in that order takes from each lot what drawing their sum at once does (the order of the
    live lots does not change as they are drawn), so a batch's total drawn per wallet is its
    events' drawn one at a time."""
    partition = f"PARTITION BY {per} " if per else ""
    return f"""CASE WHEN live THEN least(remaining_micros, greatest(0, {amount} - coalesce(
               sum(remaining_micros) FILTER (WHERE live) OVER ({partition}ORDER BY {LOT_ORDER}
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)))
           ELSE 0 END::bigint"""


def lot_draw_ctes(user: str, amount: str, now: str) -> str:
    """The CTEs of a debit of `amount` from user `user`'s lots as of `now`, after the
    statement's `locked` CTE locked the wallet (nothing there: no lot looked at):

    - `lots`: the wallet's tracked lots with a remainder, locked in id order, each as it stands
      once locked;
    - `draws`: what the debit takes from each live lot, in `LOT_ORDER` (none from a lot at or
      past its `expires_at`);
    - `drawn`, one row: the lots' remainders (`tracked`: what the wallet's `tracked_micros`
      must say, else a lot was credited after this statement's snapshot), the part that has
      expired (`expired`: out of the available balance), what the debit takes from them
      (`total`) and how much of that is granted credit (`granted`); zeros without lots.

    The wallet update takes the rest from the never-expiring paid credit."""
    return f"""lots AS (
    SELECT id, kind, expires_at, created_at, remaining_micros FROM credit_lots
    WHERE user_id = {user} AND remaining_micros > 0 AND EXISTS (SELECT 1 FROM locked)
    ORDER BY id FOR UPDATE
), draws AS (
    SELECT id, kind, remaining_micros, live, {lot_draw(amount)} AS drawn
    FROM (SELECT *, {lot_live(now)} AS live FROM lots) l
), drawn AS (
    SELECT coalesce(sum(remaining_micros), 0)::bigint AS tracked,
           coalesce(sum(remaining_micros) FILTER (WHERE NOT live), 0)::bigint AS expired,
           coalesce(sum(drawn), 0)::bigint AS total,
           coalesce(sum(drawn) FILTER (WHERE kind = 'granted'), 0)::bigint AS granted
    FROM draws
)"""


def drawn_wallet_update(user: str, amount: str, *, when: str = "") -> str:
    """The covered debit over lots, one UPDATE for either kind of wallet: `amount` off the
    balance and what the lots gave (`lot_draw_ctes`) off `tracked_micros`, only if the
    available balance less the expired lots covers it and the lots seen are all the wallet
    tracks (else nothing is written: the caller reads the wallet again, and runs it again if
    covered). A wallet the `locked` CTE locked is judged as it stood once locked; any other
    (tracking no lot: nothing to lock first) as the UPDATE reads it, like any covered
    UPDATE."""
    return f"""UPDATE accounts a SET balance_micros = a.balance_micros - {amount},
        tracked_micros = a.tracked_micros - d.total
    FROM drawn d LEFT JOIN locked l ON true
    WHERE a.user_id = {user}
      AND coalesce(l.balance_micros, a.balance_micros) - coalesce(l.held_micros, a.held_micros)
          - d.expired >= {amount}
      AND coalesce(l.tracked_micros, a.tracked_micros) = d.tracked{when}
    RETURNING a.id, a.user_id, a.balance_micros, a.held_micros, a.watch_micros,
              d.expired AS expired_micros"""


def head_lot_ctes(user: str, amount: str, now: str) -> str:
    """The CTEs of a debit of `amount` from user `user`'s first live lot alone, with no lock
    taken before the wallet's UPDATE (`head_wallet_update`), for the debit that fits in it (a
    wallet with a promotional grant: nearly every debit of it):

    - `seen`: the wallet's row version (`xmin`) as of the statement's snapshot;
    - `lots`: its tracked lots with a remainder as of that snapshot, read without locks;
    - `head`: the first live one in `LOT_ORDER` (none at or past its `expires_at`);
    - `drawn`, one row only if the head covers `amount`: what has expired (`expired`: out of the
      available balance) and how much of `amount` is granted credit (`granted`).

    Exact only if nothing changed the wallet's lots after the snapshot: every writer of lots
    writes the wallet row in the same transaction (a credit, a draw, a sweep, a take-back), so
    `head_wallet_update` debits only a wallet whose row version is still `seen`'s, re-checked on
    the locked row. Else nothing is written, and the caller runs the debit over all the lots
    (`lot_draw_ctes`), which locks them."""
    return f"""seen AS (
    SELECT xmin AS version FROM accounts WHERE user_id = {user}
), lots AS (
    SELECT id, kind, expires_at, created_at, remaining_micros,
           expires_at IS NULL OR expires_at > {now} AS live
    FROM credit_lots WHERE user_id = {user} AND remaining_micros > 0
), head AS (
    SELECT id, kind, remaining_micros FROM lots WHERE live ORDER BY {LOT_ORDER} LIMIT 1
), drawn AS (
    SELECT coalesce((SELECT sum(remaining_micros) FROM lots WHERE NOT live), 0)::bigint
               AS expired,
           CASE WHEN kind = 'granted' THEN {amount} ELSE 0 END::bigint AS granted
    FROM head WHERE remaining_micros >= {amount}
)"""


def head_wallet_update(user: str, amount: str, *, when: str = "") -> str:
    """The debit of `head_lot_ctes`: `amount` off the balance and off `tracked_micros`, only if
    the head lot covers it, the wallet's row version is the one the lots were read with, and
    its available balance less the expired lots covers it (both re-checked on the locked
    row)."""
    return f"""UPDATE accounts a SET balance_micros = a.balance_micros - {amount},
        tracked_micros = a.tracked_micros - {amount}
    FROM drawn d
    WHERE a.user_id = {user} AND a.xmin = (SELECT version FROM seen)
      AND a.balance_micros - a.held_micros - d.expired >= {amount}{when}
    RETURNING a.id, a.user_id, a.balance_micros, a.held_micros, a.watch_micros,
              d.expired AS expired_micros"""


def head_draw_update(amount: str) -> str:
    """The `lot_draws` CTE of `head_lot_ctes`: `amount` off the head lot, once the `wallet` CTE
    took the debit."""
    return f"""UPDATE credit_lots l SET remaining_micros = l.remaining_micros - {amount}
    FROM head h WHERE l.id = h.id AND EXISTS (SELECT 1 FROM wallet)"""


def lot_draws_update(wallet: str = "wallet") -> str:
    """The `lot_draws` CTE: the draws (`draws`, each lot's `drawn`) written, once the `wallet`
    CTE took the debit (a batch's `wallets`, when it applies every wallet or none): each lot
    by its key."""
    return f"""UPDATE credit_lots l SET remaining_micros = l.remaining_micros - d.drawn
    FROM draws d WHERE l.id = d.id AND d.drawn > 0 AND EXISTS (SELECT 1 FROM {wallet})"""


LOT_DRAWS_UPDATE = lot_draws_update()


def expired_lots(user: str, now: str) -> str:
    """What `user`'s lots at or past their expiry still hold (not yet swept), read without
    locks: a reserve leaves it out of the available balance."""
    return (
        f"(SELECT coalesce(sum(remaining_micros), 0)::bigint FROM credit_lots"
        f" WHERE user_id = {user} AND remaining_micros > 0 AND expires_at <= {now})"
    )
