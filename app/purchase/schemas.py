"""What the portal sends to start a top-up and what it gets back (DESIGN.md, Core shapes)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.ledger.schemas import BalanceOut
from app.money import CURRENCY, Currency
from app.orders.schemas import OrderOut
from app.schemas import AmountText, StrictModel

PaymentMode = Literal["elements", "checkout"]
"""`elements`: a PaymentIntent paid in a Stripe Elements popup; `checkout`: a hosted Stripe
Checkout page."""

PAYMENT_MODES: tuple[PaymentMode, ...] = ("elements", "checkout")


class PurchaseOptionsOut(BaseModel):
    """What the Top up page offers."""

    presets: list[str] = Field(examples=[["10.00", "20.00", "50.00"]])
    min: str = Field(examples=["1.00"], description="Smallest custom amount.")
    max: str = Field(examples=["10000.00"], description="Largest custom amount.")
    currency: Currency = CURRENCY
    modes: list[PaymentMode]
    publishable_key: str | None = Field(description="For Stripe Elements (`pk_…`).")
    max_pending_orders: int = Field(description="Unpaid orders a user may have at once.")
    checkout_ttl_minutes: int = Field(description="How long a Checkout page stays payable.")
    save_card_consent: str = Field(
        description="What the portal must show next to the `save_card` box: the card may be "
        "charged later without the user present (auto top-up), for what amount, and how to "
        "cancel."
    )
    tax_added: bool = Field(
        default=False,
        description="Stripe Tax adds sales tax / VAT on top of the amount (prices are "
        "tax-exclusive): the balance is credited the amount, the payment is amount + tax.",
    )
    invoices: bool = Field(
        default=False,
        description="Each top-up gets an invoice (the billing profile's `invoices`).",
    )


class PurchaseIn(StrictModel):
    """A top-up to start."""

    amount: AmountText = Field(
        description="USD with at most 2 decimals, between `min` and `max` of "
        "`GET /v1/purchase/options` (the configured bounds: outside them is a 422)."
    )
    mode: PaymentMode
    save_card: bool = Field(
        default=False,
        description="Save the card for auto top-up (`setup_future_usage=off_session`); show "
        "`save_card_consent` from `GET /v1/purchase/options` first.",
    )


class ElementsPaymentOut(BaseModel):
    """Pay in a Stripe Elements popup: confirm the PaymentIntent with its `client_secret`."""

    mode: Literal["elements"] = "elements"
    order: OrderOut
    client_secret: str
    publishable_key: str | None


class CheckoutPaymentOut(BaseModel):
    """Pay on the hosted Stripe Checkout page at `checkout_url`."""

    mode: Literal["checkout"] = "checkout"
    order: OrderOut
    checkout_url: str


PaymentOut = Annotated[ElementsPaymentOut | CheckoutPaymentOut, Field(discriminator="mode")]
"""The answer of `POST /purchase` and `POST /orders/{id}/resume`."""


class PaymentResultOut(BaseModel):
    """The result page: the order as Stripe last told us, and the balance it led to."""

    order: OrderOut
    balance: BalanceOut
