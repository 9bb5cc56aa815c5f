"""The shapes the gateway's operations exchange with their store (`repository.UsageStore`)."""

from __future__ import annotations

from typing import Any, NamedTuple

from app.errors import InsufficientBalance, SpendLimitExceeded
from app.ledger.repository import WalletRow

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
