"""Billing profile shapes, and the rules an address and a tax ID must follow before anything
is stored or sent to Stripe (a bad value is a 422 naming its field)."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import pycountry
from pydantic import AfterValidator, BaseModel, Field, StrictBool, model_validator

from app.emails import single_address
from app.models.billing import TaxIdVerification
from app.schemas import CleanStr, StrictModel

MAX_TAX_IDS = 5
"""Tax IDs one profile may carry (a company has one or two; Stripe's own limit is higher)."""

COUNTRY_CODES = frozenset(c.alpha_2 for c in pycountry.countries)
"""ISO 3166-1 alpha-2."""

EU_VAT_PREFIXES = frozenset(
    "AT BE BG CY CZ DE DK EE EL ES FI FR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK XI".split()
)
"""The country prefixes of EU VAT numbers (Greece is `EL`; `XI`: Northern Ireland)."""


class TaxIdType(StrEnum):
    """The kinds of tax ID accepted, named as Stripe names them."""

    EU_VAT = "eu_vat"
    GB_VAT = "gb_vat"
    CH_VAT = "ch_vat"
    NO_VAT = "no_vat"
    US_EIN = "us_ein"
    CA_BN = "ca_bn"
    AU_ABN = "au_abn"
    NZ_GST = "nz_gst"


_EU_VAT_FORMATS = {
    "AT": r"ATU\d{8}",
    "BE": r"BE[01]\d{9}",
    "DE": r"DE\d{9}",
    "DK": r"DK\d{8}",
    "ES": r"ES[0-9A-Z]\d{7}[0-9A-Z]",
    "FI": r"FI\d{8}",
    "FR": r"FR[0-9A-Z]{2}\d{9}",
    "IE": r"IE\d{7}[A-Z]{1,2}|IE\d[A-Z+*]\d{5}[A-Z]",
    "IT": r"IT\d{11}",
    "NL": r"NL\d{9}B\d{2}",
    "PL": r"PL\d{10}",
    "SE": r"SE\d{12}",
}
"""The exact formats of the commonest EU VAT numbers; the others are the prefix and 8 to 12
letters or digits."""

_FORMATS = {
    TaxIdType.GB_VAT: r"GB\d{9}(\d{3})?",
    TaxIdType.CH_VAT: r"CHE-?\d{3}\.?\d{3}\.?\d{3} ?(MWST|TVA|IVA)",
    TaxIdType.NO_VAT: r"\d{9}MVA",
    TaxIdType.US_EIN: r"\d{2}-?\d{7}",
    TaxIdType.CA_BN: r"\d{9}",
    TaxIdType.AU_ABN: r"\d{11}",
    TaxIdType.NZ_GST: r"\d{8,9}",
}

_POSTAL_CODES = {"US": r"\d{5}(-\d{4})?", "CA": r"[A-Z]\d[A-Z] ?\d[A-Z]\d"}
"""Stripe Tax needs a postal code in these countries; its shape there."""


def tax_id_problem(kind: TaxIdType, value: str) -> str | None:
    """Why `value` is not a well-formed tax ID of `kind`, or None."""
    if kind is TaxIdType.EU_VAT:
        prefix = value[:2]
        if prefix not in EU_VAT_PREFIXES:
            return "an EU VAT number starts with its country's prefix (DE, FR, EL, …)"
        pattern = _EU_VAT_FORMATS.get(prefix, rf"{prefix}[0-9A-Z]{{8,12}}")
    else:
        pattern = _FORMATS[kind]
    if not re.fullmatch(pattern, value):
        return f"not a well-formed {kind.value} number"
    return None


def _country(value: str) -> str:
    code = value.upper()
    if code not in COUNTRY_CODES:
        raise ValueError("not an ISO 3166-1 alpha-2 country code")
    return code


def _email(value: str) -> str:
    if single_address(value) is None:
        raise ValueError("not a single email address")
    return value


CountryCode = Annotated[
    CleanStr, Field(min_length=2, max_length=2, examples=["DE"]), AfterValidator(_country)
]
Email = Annotated[CleanStr, Field(min_length=3, max_length=320), AfterValidator(_email)]


class AddressIn(StrictModel):
    """A postal address; Stripe Tax needs the country, and in the US and Canada the postal
    code."""

    line1: CleanStr | None = Field(default=None, max_length=200)
    line2: CleanStr | None = Field(default=None, max_length=200)
    city: CleanStr | None = Field(default=None, max_length=200)
    postal_code: CleanStr | None = Field(default=None, max_length=20)
    state: CleanStr | None = Field(default=None, max_length=100)
    country: CountryCode

    @model_validator(mode="after")
    def _postal_code(self) -> AddressIn:
        shape = _POSTAL_CODES.get(self.country)
        if shape is None:
            return self
        if not self.postal_code:
            raise ValueError(f"postal_code is required in {self.country}")
        self.postal_code = self.postal_code.upper()
        if not re.fullmatch(shape, self.postal_code):
            raise ValueError(f"postal_code is not a {self.country} postal code")
        return self


class TaxIdIn(StrictModel):
    """A tax ID: its kind as Stripe names it and its number (spaces are dropped, letters
    upper-cased)."""

    type: TaxIdType
    value: CleanStr = Field(min_length=2, max_length=40, examples=["DE123456789"])

    @model_validator(mode="after")
    def _well_formed(self) -> TaxIdIn:
        self.value = re.sub(r"\s+", "", self.value).upper()
        problem = tax_id_problem(self.type, self.value)
        if problem is not None:
            raise ValueError(f"tax_ids: {problem}")
        return self


class BillingProfileIn(StrictModel):
    """The whole billing profile (a PUT replaces it). Tax IDs left out are removed from the
    Stripe Customer; new ones are added and verified by Stripe (`pending` until then)."""

    legal_name: CleanStr | None = Field(
        default=None, min_length=1, max_length=256, examples=["Example GmbH"]
    )
    email: Email | None = Field(default=None, description="Where invoices are sent.")
    address: AddressIn
    tax_ids: list[TaxIdIn] = Field(default_factory=list, max_length=MAX_TAX_IDS)
    po_number: CleanStr | None = Field(default=None, min_length=1, max_length=64)
    invoices: StrictBool = Field(
        default=False, description="Issue an invoice for every top-up (all payment paths)."
    )

    @model_validator(mode="after")
    def _distinct_tax_ids(self) -> BillingProfileIn:
        seen = {(t.type, t.value) for t in self.tax_ids}
        if len(seen) != len(self.tax_ids):
            raise ValueError("tax_ids: the same tax ID twice")
        return self


class AddressOut(BaseModel):
    line1: str | None
    line2: str | None
    city: str | None
    postal_code: str | None
    state: str | None
    country: str


class TaxIdOut(BaseModel):
    type: TaxIdType
    value: str
    verification: TaxIdVerification = Field(
        description="Stripe's verification: only a `verified` ID makes a purchase a "
        "business purchase (reverse charge)."
    )


class BillingProfileOut(BaseModel):
    """The billing profile; before the first PUT every field is empty (`address` null,
    `invoices` false, `updated_at` null)."""

    legal_name: str | None
    email: str | None
    address: AddressOut | None
    tax_ids: list[TaxIdOut]
    po_number: str | None
    invoices: bool
    synced: bool = Field(description="Whether the Stripe Customer has been updated to match.")
    updated_at: datetime | None
