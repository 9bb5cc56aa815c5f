"""All tables; importing this package registers them on `Base.metadata`."""

from app.models.base import Base
from app.models.ledger import Account, Hold, LedgerEntry, LedgerTransaction
from app.models.orders import Order, StripeCustomer, StripeEvent
from app.models.service_tokens import ServiceToken

__all__ = [
    "Account",
    "Base",
    "Hold",
    "LedgerEntry",
    "LedgerTransaction",
    "Order",
    "ServiceToken",
    "StripeCustomer",
    "StripeEvent",
]
