"""Billing profile shapes, and the rules an address and a tax ID must follow before anything
is stored or sent to Stripe (a bad value is a 422 naming its field)."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Union

import pycountry
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo

from app.emails import single_address
from app.models.billing import TaxIdVerification
from app.schemas import (
    CleanStr,
    OneOf,
    StrictModel,
    _document_stripping,
    refuse_control_characters,
    stripped_pattern,
)

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
    "AT": r"U\d{8}",
    "BE": r"[01]\d{9}",
    "DE": r"\d{9}",
    "DK": r"\d{8}",
    "ES": r"[0-9A-Z]\d{7}[0-9A-Z]",
    "FI": r"\d{8}",
    "FR": r"[0-9A-Z]{2}\d{9}",
    "IE": r"\d{7}[A-Z]{1,2}|\d[A-Z+*]\d{5}[A-Z]",
    "IT": r"\d{11}",
    "NL": r"\d{9}B\d{2}",
    "PL": r"\d{10}",
    "SE": r"\d{12}",
}
"""The exact formats of the commonest EU VAT numbers (after the prefix); the other prefixes
take 8 to 12 letters or digits."""

EU_VAT = "|".join(
    [f"{prefix}(?:{shape})" for prefix, shape in _EU_VAT_FORMATS.items()]
    + [f"(?:{'|'.join(sorted(EU_VAT_PREFIXES - set(_EU_VAT_FORMATS)))})[0-9A-Z]{{8,12}}"]
)
GB_VAT = r"GB\d{9}(?:\d{3})?"
CH_VAT = r"CHE\d{9}(?:MWST|TVA|IVA)"
NO_VAT = r"\d{9}MVA"
US_EIN = r"\d{2}-\d{7}"
CA_BN = r"\d{9}"
AU_ABN = r"\d{11}"
NZ_GST = r"\d{8,9}"

_POSTAL_CODES = {"US": r"\d{5}(?:-\d{4})?", "CA": r"[A-Z]\d[A-Z] ?\d[A-Z]\d"}
"""Stripe Tax needs a postal code in these countries; its shape there."""

EMAIL = (
    r"[A-Za-z0-9_%+-]{1,31}(?:\.[A-Za-z0-9_%+-]{1,31})?"
    r"@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,3}"
)
"""Where invoices go: a plain address (dot-atoms, at most 319 characters)."""


def _email(value: str) -> str:
    if single_address(value) is None:
        raise ValueError("not a single email address")
    return value


def _clean(core: str, example: str) -> FieldInfo:
    """A body string that must match `core` (after the server strips it), documented so."""
    field: FieldInfo = Field(pattern=stripped_pattern(core), examples=[example])
    return field


CountryCode = Annotated[
    str, OneOf(sorted(COUNTRY_CODES)), AfterValidator(refuse_control_characters)
]
"""ISO 3166-1 alpha-2, upper case (`DE`)."""
Email = Annotated[
    str,
    _clean(EMAIL, "ap@example.com"),
    AfterValidator(refuse_control_characters),
    AfterValidator(_email),
]


def _postal_code_rules() -> dict[str, object]:
    """The postal code rule of `_POSTAL_CODES`, as JSON Schema says it (`if`/`then`)."""
    return {
        "allOf": [
            {
                "if": {"properties": {"country": {"const": country}}, "required": ["country"]},
                "then": {
                    "required": ["postal_code"],
                    "properties": {
                        "postal_code": {"type": "string", "pattern": stripped_pattern(shape)}
                    },
                },
            }
            for country, shape in _POSTAL_CODES.items()
        ]
    }


def _address_schema(schema: dict[str, Any]) -> None:
    _document_stripping(schema)
    schema.update(_postal_code_rules())


class AddressIn(StrictModel):
    """A postal address; Stripe Tax needs the country, and in the US and Canada the postal
    code."""

    model_config = ConfigDict(json_schema_extra=_address_schema)

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
        if not re.fullmatch(shape, self.postal_code):
            raise ValueError(f"postal_code is not a {self.country} postal code")
        return self


class _TaxIdShape(NamedTuple):
    pattern: str
    example: str
    doc: str | None = None


_TAX_ID_SHAPES = {
    TaxIdType.EU_VAT: _TaxIdShape(
        EU_VAT,
        "DE123456789",
        "An EU VAT number with its country prefix (`EL` for Greece), no spaces.",
    ),
    TaxIdType.GB_VAT: _TaxIdShape(GB_VAT, "GB123456789"),
    TaxIdType.CH_VAT: _TaxIdShape(CH_VAT, "CHE123456789MWST"),
    TaxIdType.NO_VAT: _TaxIdShape(NO_VAT, "123456789MVA"),
    TaxIdType.US_EIN: _TaxIdShape(US_EIN, "12-3456789"),
    TaxIdType.CA_BN: _TaxIdShape(CA_BN, "123456789"),
    TaxIdType.AU_ABN: _TaxIdShape(AU_ABN, "12345678901"),
    TaxIdType.NZ_GST: _TaxIdShape(NZ_GST, "123456789"),
}
"""Each kind of tax ID: the shape of its number (upper case, no spaces) and an example."""


class _TaxIdIn(StrictModel):
    """What every kind's model carries; `_tax_id_model` narrows `type` to its kind and `value`
    to its shape."""

    type: TaxIdType
    value: str


def _tax_id_model(kind: TaxIdType, shape: _TaxIdShape) -> type[_TaxIdIn]:
    """The body model of one kind of tax ID, named after it (`eu_vat`: `EuVatIn`)."""
    name = "".join(part.capitalize() for part in kind.split("_")) + "In"
    tag: Any = Literal[kind.value]
    value: Any = Annotated[
        str, _clean(shape.pattern, shape.example), AfterValidator(refuse_control_characters)
    ]
    return create_model(
        name,
        __base__=_TaxIdIn,
        __doc__=shape.doc,
        __module__=__name__,
        type=(tag, ...),
        value=(value, ...),
    )


_TAX_ID_MODELS = tuple(_tax_id_model(kind, shape) for kind, shape in _TAX_ID_SHAPES.items())

if TYPE_CHECKING:
    TaxIdIn = _TaxIdIn
else:
    # The kinds' models as one discriminated union (`Union[tuple]`: a union of a tuple's types).
    TaxIdIn = Annotated[Union[_TAX_ID_MODELS], Field(discriminator="type")]  # noqa: UP007
"""A tax ID: its kind as Stripe names it (`type`) and its number as Stripe wants it (upper
case, no spaces), each kind's shape its own (a malformed number is a 422)."""


class BillingProfileIn(StrictModel):
    """The whole billing profile (a PUT replaces it). Tax IDs left out are removed from the
    Stripe Customer; new ones are added and verified by Stripe (`pending` until then)."""

    legal_name: CleanStr | None = Field(
        default=None, min_length=1, max_length=256, examples=["Example GmbH"]
    )
    email: Email | None = Field(default=None, description="Where invoices are sent.")
    address: AddressIn
    tax_ids: list[TaxIdIn] = Field(
        default_factory=list,
        max_length=MAX_TAX_IDS,
        json_schema_extra={"uniqueItems": True},
        description="Each tax ID once: two of one `type` whose values are equal once the "
        "whitespace around them is stripped are the same tax ID (422; `uniqueItems` compares "
        "the values as sent).",
    )
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
