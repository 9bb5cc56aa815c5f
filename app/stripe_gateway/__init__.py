"""The only code that imports `stripe`: `StripeGateway` (every Stripe call, idempotency keys
derived from our ids, Stripe errors mapped to ours) and webhook verification.

    from app.stripe_gateway import StripeGateway, StripeOutcomeUnknown, StripeRequestFailed

The app builds one in the lifespan as `app.state.stripe`.
"""

from app.stripe_gateway.deadline import StripeBudget, current_budget, stripe_budget
from app.stripe_gateway.errors import (
    StripeAuthenticationRequired,
    StripeCardDeclined,
    StripeCustomerMissing,
    StripeDeadlineExceeded,
    StripeIdempotencyKeyReused,
    StripeObjectNotFound,
    StripeOutcomeUnknown,
    StripeRequestFailed,
)
from app.stripe_gateway.gateway import (
    StripeGateway,
    StripeJSON,
    expandable_id,
    expanded,
    verify_webhook,
)

__all__ = [
    "StripeAuthenticationRequired",
    "StripeBudget",
    "StripeCardDeclined",
    "StripeCustomerMissing",
    "StripeDeadlineExceeded",
    "StripeGateway",
    "StripeIdempotencyKeyReused",
    "StripeJSON",
    "StripeObjectNotFound",
    "StripeOutcomeUnknown",
    "StripeRequestFailed",
    "current_budget",
    "expandable_id",
    "expanded",
    "stripe_budget",
    "verify_webhook",
]
