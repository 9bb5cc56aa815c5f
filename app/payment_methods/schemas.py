"""Shapes of the saved-card endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.models.payment_methods import PaymentMethod


class PaymentMethodOut(BaseModel):
    """A saved card."""

    id: str = Field(description="Stripe's PaymentMethod id (`pm_…`).", examples=["pm_1Q2w3E"])
    brand: str = Field(examples=["visa"])
    last4: str = Field(examples=["4242"])
    exp_month: int = Field(examples=[12])
    exp_year: int = Field(examples=[2034])
    created_at: datetime


def payment_method_out(row: PaymentMethod) -> PaymentMethodOut:
    return PaymentMethodOut.model_validate(row, from_attributes=True)
