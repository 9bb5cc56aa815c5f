"""What counts as an email address the service will store and send to.

One rule, used where an address comes in (the JWT's `email` claim, `app.auth.jwt`) and again
where mail goes out (`app.notifications.delivery`, for addresses stored before the rule): the
value must parse, under the same policy the outgoing message uses, as exactly one bare address
(`local@domain`: no display name, comment, group or list), with no control, format or
whitespace character (U+2028 and U+2029 included: the email package treats them as line
breaks and refuses the header).
"""

from __future__ import annotations

import unicodedata
from email import policy
from typing import Any

MAX_EMAIL_CHARS = 320
"""RFC 5321: 64 for the local part, 1 for the @, 255 for the domain."""

_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
_ALLOWED_DEFECTS = ("NonASCIILocalPartDefect",)
"""An internationalised local part (`josé@…`) is sent with SMTPUTF8 when the server has it."""


def single_address(value: Any) -> str | None:
    """`value` if it is exactly one usable address, else None."""
    if not isinstance(value, str) or not 3 <= len(value) <= MAX_EMAIL_CHARS:
        return None
    if any(c.isspace() or unicodedata.category(c) in _REFUSED_CATEGORIES for c in value):
        return None
    try:
        header = policy.default.header_factory("To", value)
        addresses = header.addresses
        defects = header.defects
    except Exception:
        # The stdlib parser raises more than HeaderParseError: `a@[` is an AttributeError
        # inside it, `a@` an IndexError.
        return None
    if len(addresses) != 1 or any(type(d).__name__ not in _ALLOWED_DEFECTS for d in defects):
        return None
    [address] = addresses
    if not address.username or not address.domain or address.addr_spec != value:
        return None
    return value
