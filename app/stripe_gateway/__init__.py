"""The only code that imports `stripe`: `StripeGateway` (every Stripe call, idempotency keys
derived from our ids, Stripe errors mapped to ours) and webhook verification.

    from app.stripe_gateway import StripeGateway, StripeOutcomeUnknown, StripeRequestFailed

The app builds one in the lifespan as `app.state.stripe`.
"""

from app.stripe_gateway.errors import (
    StripeAuthenticationRequired,
    StripeCardDeclined,
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
    "StripeCardDeclined",
    "StripeGateway",
    "StripeIdempotencyKeyReused",
    "StripeJSON",
    "StripeObjectNotFound",
    "StripeOutcomeUnknown",
    "StripeRequestFailed",
    "expandable_id",
    "expanded",
    "verify_webhook",
]
