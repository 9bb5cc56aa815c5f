"""What a Stripe call can end in, besides success, as errors of ours.

Two questions matter to a caller, and the classes answer them::

    BillingError
    ├── PaymentDeclined (402, payment_declined)
    │   └── StripeCardDeclined ............ also a StripeRequestFailed: the card was refused
    │       └── StripeAuthenticationRequired  off-session: the bank wants the customer present
    ├── StripeRequestFailed (502, payment_provider_error; these three are in `app/errors.py`)
    │   │                                  Stripe answered and refused: the call DID NOT happen
    │   ├── StripeObjectNotFound .......... the object does not exist at Stripe (404)
    │   │   └── StripeCustomerMissing ..... the Customer we passed is gone (deleted at Stripe):
    │   │                                  forget the stored id, create a new one, retry
    │   └── StripeCardDeclined
    ├── PaymentProviderUnavailable (503, payment_provider_unavailable, Retry-After)
    │   └── StripeOutcomeUnknown .......... no answer (timeout, connection), a 5xx, a 409 lock
    │                                      or a 429 after the SDK's retries: the call MAY have
    │                                      happened; repeat it later with the same idempotency key
    │       └── StripeDeadlineExceeded .... the request's Stripe budget ran out
    │                                      (`app.stripe_gateway.deadline`); same handling
    └── InternalError (500)
        └── StripeIdempotencyKeyReused .... we sent another request under an idempotency key
                                           already used with different parameters (our bug); an
                                           earlier call under that key may have happened

So a refund caller writes::

    try:
        refund = await gateway.create_refund(...)
    except StripeOutcomeUnknown:
        ...  # keep the debit; retry later with the same refund_request_id
    except StripeRequestFailed:
        ...  # definite: nothing was refunded; reverse the debit

and a purchase route lets them propagate: they render as 402 / 502 / 503 problem+json.
"""

from __future__ import annotations

from typing import Any

import stripe
import structlog

from app.errors import (
    BillingError,
    InternalError,
    PaymentDeclined,
    PaymentProviderUnavailable,
)
from app.errors import (
    StripeCustomerMissing as StripeCustomerMissing,
)
from app.errors import (
    StripeObjectNotFound as StripeObjectNotFound,
)
from app.errors import (
    StripeRequestFailed as StripeRequestFailed,
)

log = structlog.get_logger(__name__)

RETRY_AFTER_SECONDS = 5
"""Retry-After sent with a 503 when Stripe did not say how long to wait."""


class StripeCardDeclined(PaymentDeclined, StripeRequestFailed):
    """The card was declined; `detail` is Stripe's message meant for the customer."""

    def __init__(
        self,
        detail: str | None = None,
        *,
        decline_code: str | None = None,
        payment_intent: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detail, decline_code=decline_code, **kwargs)
        self.decline_code = decline_code
        """The issuer's reason (`insufficient_funds`, `expired_card`, …), when Stripe gives one."""
        self.payment_intent_id: str | None = getattr(payment_intent, "id", None)
        """The PaymentIntent the decline is about (Stripe's error names it), if any."""
        self.payment_intent_status: str | None = getattr(payment_intent, "status", None)
        """The PaymentIntent's status after the decline (`requires_payment_method`, or
        `requires_action` when the customer can still authenticate it on-session)."""


class StripeAuthenticationRequired(StripeCardDeclined):
    """An off-session payment the issuer wants authenticated (`authentication_required`): the
    customer must pay on-session (Stripe.js with the PaymentIntent's `client_secret`)."""


class StripeOutcomeUnknown(PaymentProviderUnavailable):
    """Stripe did not confirm the request (timeout, connection error, 5xx, 409, 429 after the
    SDK's retries). It may or may not have taken effect: repeat it later with the same
    idempotency key; never treat it as a failure."""

    def __init__(
        self,
        detail: str | None = None,
        *,
        reason: str,
        retry_after: int = RETRY_AFTER_SECONDS,
        http_status: int | None = None,
    ) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.reason = reason
        """`timeout`, `connection`, `server_error`, `conflict`, `rate_limited` or `deadline`."""
        self.http_status = http_status


class StripeDeadlineExceeded(StripeOutcomeUnknown):
    """The request's (or job run's) time for Stripe work ran out: the call was cut off or never
    started (`sent`). Handled like any unknown outcome: repeat later with the same key."""

    def __init__(self, *, operation: str, sent: bool, retry_after: int = RETRY_AFTER_SECONDS):
        super().__init__(
            "The payment provider is slow to answer; nothing was completed. Try again shortly.",
            reason="deadline",
            retry_after=retry_after,
        )
        self.operation = operation
        self.sent = sent
        """Whether a request reached the wire (False: refused before it started)."""


class StripeIdempotencyKeyReused(InternalError):
    """We reused an idempotency key with different parameters; Stripe refused this request, but
    the earlier one under the same key may have taken effect."""

    def __init__(self, idempotency_key: str | None, stripe_message: str | None) -> None:
        super().__init__("The payment provider refused a conflicting retry.")
        self.idempotency_key = idempotency_key
        self.stripe_message = stripe_message


def _retry_after(exc: stripe.StripeError) -> int:
    value = (exc.headers or {}).get("retry-after") or (exc.headers or {}).get("Retry-After")
    try:
        return max(1, min(60, int(value))) if value is not None else RETRY_AFTER_SECONDS
    except ValueError:
        return RETRY_AFTER_SECONDS


def _is_timeout(exc: BaseException) -> bool:
    cause = exc.__cause__
    while cause is not None:
        if "Timeout" in type(cause).__name__:
            return True
        cause = cause.__cause__
    return False


def map_stripe_error(
    exc: stripe.StripeError, *, operation: str, idempotency_key: str | None = None
) -> BillingError:
    """Our error for a Stripe SDK exception (see the module docstring)."""
    error = exc.error
    stripe_code = exc.code or (error.code if error is not None else None)
    stripe_type = error.type if error is not None else None
    fields: dict[str, Any] = {
        "stripe_code": stripe_code,
        "stripe_type": stripe_type,
        "http_status": exc.http_status,
        "stripe_message": exc.user_message,
        "param": error.param if error is not None else None,
    }
    log_fields = {
        "operation": operation,
        "error": type(exc).__name__,
        "http_status": exc.http_status,
        "stripe_code": stripe_code,
        "request_id": exc.request_id,
        "idempotency_key": idempotency_key,
    }

    if isinstance(exc, stripe.CardError):
        decline_code = error.decline_code if error is not None else None
        log.info("stripe_card_declined", decline_code=decline_code, **log_fields)
        declined = (
            StripeAuthenticationRequired
            if stripe_code == "authentication_required"
            else StripeCardDeclined
        )
        return declined(
            exc.user_message or "Your card was declined.",
            decline_code=decline_code,
            payment_intent=error.payment_intent if error is not None else None,
            **fields,
        )
    if isinstance(exc, stripe.IdempotencyError):
        log.error("stripe_idempotency_key_reused", message=exc.user_message, **log_fields)
        return StripeIdempotencyKeyReused(idempotency_key, exc.user_message)
    if isinstance(exc, stripe.APIConnectionError):
        reason = "timeout" if _is_timeout(exc) else "connection"
        log.warning("stripe_unreachable", reason=reason, **log_fields)
        return StripeOutcomeUnknown(
            "The payment provider did not answer in time; try again shortly.", reason=reason
        )
    if isinstance(exc, stripe.RateLimitError):
        log.warning("stripe_rate_limited", **log_fields)
        return StripeOutcomeUnknown(
            "The payment provider is busy; try again shortly.",
            reason="rate_limited",
            retry_after=_retry_after(exc),
            http_status=exc.http_status,
        )
    if isinstance(exc, stripe.InvalidRequestError) and (
        exc.http_status == 404 or stripe_code == "resource_missing"
    ):
        log.info("stripe_object_not_found", message=exc.user_message, **log_fields)
        if fields["param"] == "customer":
            return StripeCustomerMissing(**fields)
        return StripeObjectNotFound(**fields)
    if isinstance(
        exc, stripe.InvalidRequestError | stripe.AuthenticationError | stripe.PermissionError
    ):
        log.error("stripe_request_refused", message=exc.user_message, **log_fields)
        return StripeRequestFailed(**fields)
    # APIError (5xx, 409 lock or an unparseable answer) and anything else: unknown outcome.
    status = exc.http_status
    reason = "conflict" if status == 409 else "server_error"
    log.warning("stripe_error_outcome_unknown", reason=reason, **log_fields)
    return StripeOutcomeUnknown(
        "The payment provider had a problem; try again shortly.",
        reason=reason,
        retry_after=_retry_after(exc),
        http_status=status,
    )
