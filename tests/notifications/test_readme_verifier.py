"""The README's receiver-side verifier accepts what the service sends, and its example is
signed as it says."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from app.notifications import signing

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_verifier() -> Any:
    section = README.read_text().split("## Notifications (email and signed webhooks)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)
    return namespace["verify"]


def test_the_readme_verifier_accepts_our_signature_and_refuses_tampering() -> None:
    verify = _readme_verifier()
    secret = "whsec_" + "k" * 30
    body = b'{"id":"ntf_1","type":"balance.low"}'
    header = signing.sign(body, secret, int(time.time()))
    assert verify(body, header, secret)
    assert not verify(body + b" ", header, secret)
    assert not verify(body, header, secret + "x")
    assert not verify(body, signing.sign(body, secret, int(time.time()) - 301), secret)


def test_the_readme_verifier_refuses_a_malformed_header_without_raising() -> None:
    # Headers decoded as latin-1 (as most frameworks do) carry any byte above 0x7f as a
    # non-ASCII character, which `hmac.compare_digest` refuses with TypeError.
    verify = _readme_verifier()
    secret = "whsec_" + "k" * 30
    body = b'{"id":"ntf_1","type":"balance.low"}'
    now = int(time.time())
    good = signing.sign(body, secret, now).partition("v1=")[2]
    for header in (
        f"t={now},v1=" + "\u00ff" * 64,
        f"t={now},v1=\u00e9",
        f"t={now},v1=" + good.upper(),
        f"t={now},v1=" + "g" * 64,
        f"t={now},v1=",
        f"t={now}",
        f"t=abc,v1={good}",
        f"t=\u0661\u0662,v1={good}",
        f"v1={good}",
        "",
    ):
        assert verify(body, header, secret) is False, header


def test_the_readme_example_is_signed_as_it_says() -> None:
    section = README.read_text().split("## Notifications (email and signed webhooks)", 1)[1]
    header = re.search(r"Billing-Signature: (t=\d+,v1=[0-9a-f]{64})", section)
    body = re.search(r"\n(\{\"created\".*\})\n", section)
    assert header is not None
    assert body is not None
    assert signing.verify(
        body.group(1).encode(),
        header.group(1),
        "whsec_example_secret_0123456789",
        now=int(header.group(1).split(",")[0][2:]),
    )
