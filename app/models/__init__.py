"""All tables; importing this package registers them on `Base.metadata`."""

from app.models.audit import AuditEntry
from app.models.base import Base
from app.models.billing import BillingProfile, BillingTaxId, OrderDocument
from app.models.ledger import Account, CreditLot, Hold, LedgerEntry, LedgerTransaction
from app.models.limits import SpendLimit
from app.models.notifications import BalanceAlert, Notification, NotificationSettings
from app.models.orders import Order, StripeCustomer, StripeEvent
from app.models.payment_methods import AutoTopup, AutoTopupSettings, PaymentMethod
from app.models.promotions import LotNotice, PromoCode, PromoRedemption
from app.models.refunds import Dispute, RefundRequest, StripeRefund
from app.models.service_tokens import ServiceToken
from app.models.usage import UsageRecord

__all__ = [
    "Account",
    "AuditEntry",
    "AutoTopup",
    "AutoTopupSettings",
    "BalanceAlert",
    "Base",
    "BillingProfile",
    "BillingTaxId",
    "CreditLot",
    "Dispute",
    "Hold",
    "LedgerEntry",
    "LedgerTransaction",
    "LotNotice",
    "Notification",
    "NotificationSettings",
    "Order",
    "OrderDocument",
    "PaymentMethod",
    "PromoCode",
    "PromoRedemption",
    "RefundRequest",
    "ServiceToken",
    "SpendLimit",
    "StripeCustomer",
    "StripeEvent",
    "StripeRefund",
    "UsageRecord",
]
