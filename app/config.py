"""Settings, read from `BILLING_*` environment variables (and a `.env` file)."""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.money import MAX_AMOUNT_DIGITS, MAX_AMOUNT_MICROS, parse_amount

_PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "changethis", "dev-secret"}

Environment = Literal["local", "test", "production"]

DATABASE_URL_EXPECTED = "postgresql+asyncpg://user:password@host:5432/dbname"
_TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")

LOCAL_JWT_SECRET = "local-development-only-jwt-secret-never-in-production"


def _two_decimal_amount(value: Decimal) -> Decimal:
    if (
        not value.is_finite()
        or value < 0
        or value.as_tuple().exponent < -2  # type: ignore[operator]
        or value.adjusted() >= MAX_AMOUNT_DIGITS
    ):
        raise ValueError("must be a non-negative amount with at most 2 decimals")
    return value


def _https_or_loopback(url: str) -> bool:
    """An https URL, or any URL to this host (a local proxy or the development sandbox)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every knob of the service; the README's configuration table lists them."""

    model_config = SettingsConfigDict(
        env_prefix="BILLING_",
        env_file=".env",
        extra="ignore",
        validate_default=True,
        # A refusal must not quote the input: it is every BILLING_* value, secrets included.
        hide_input_in_errors=True,
    )

    # Production unless said otherwise: a deploy that forgets this variable gets every check.
    environment: Environment = "production"
    database_url: SecretStr = SecretStr("postgresql+asyncpg://postgres@127.0.0.1:5432/billing")
    """PostgreSQL, the only engine (asyncpg; `postgresql://` is read as `postgresql+asyncpg://`).
    Required in production; `make run` and the tests start an embedded server when unset.
    Several hosts (a primary and its standbys) are `?host=a:5432&host=b:5432&target_session_attrs=
    read-write`: both pools follow the primary (`app/primary.py`)."""
    database_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    """How long one connection attempt to ONE host may take before the next host is tried (a
    frozen primary accepts TCP and never answers)."""
    database_probe_interval_seconds: float = Field(default=1.0, ge=0, le=60)
    """With several hosts: how often the service checks that its primary still answers, and
    moves its connections to the new primary after a failover. 0: only when a request connects."""
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_pool_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    """How long a portal request waits for a pooled connection before it is answered 503
    `service_unavailable` with `Retry-After`."""
    gateway_combine_debits: bool = True
    """On (the default): debits of one wallet that arrive while one of its debits is in flight
    wait in the process and go as one batch when it is done (`app/usage/combining.py`), so a
    hot wallet takes its row lock and a WAL flush once per batch (make bench's hot wallet: 57 µs
    of PostgreSQL CPU per debit combined against 890 µs not combined, its debits spinning on
    the row lock), and batch requests that arrive while one is in flight go together as one
    batch (group commit; a second group may go while one is in flight, `BatchGroups`). Off:
    each debit and each batch request is its own statement, and those of one wallet queue on
    its row lock in PostgreSQL."""
    gateway_debits_in_flight: int = Field(default=4, ge=0, le=200)
    """With `gateway_combine_debits`: the most gateway write statements (debits, reserves and
    captures, alone or combined) one process has in flight at once; debits, reserves and
    captures of any wallets that arrive past it wait and go together, one statement per
    operation, when a statement is done (`app/usage/combining.py`). 0: no bound (only debits
    of one wallet are combined; holds go one by one)."""
    gateway_holds_in_flight: int = Field(default=2, ge=1, le=200)
    """With a `gateway_debits_in_flight` bound: reserves and captures wait (and go together)
    once this many gateway write statements are in flight, if fewer than that bound. A reserve
    or capture alone costs PostgreSQL ~0.55 / ~0.95 ms of CPU (a commit, and statements whose
    plans are large), one in a batch ~0.07 / ~0.15 ms: at 2, make bench's pairs cost
    PostgreSQL ~25% less CPU and the service ~15% less than at 4."""
    database_echo: bool = False
    portal_statement_timeout_ms: int = Field(default=15_000, ge=0, le=3_600_000)
    """PostgreSQL's `statement_timeout` on the service's ORM connections (the portal, operators,
    jobs; not the gateway's pool, nor migrations and the CLI): a query running longer is
    cancelled and answered 503 `service_unavailable` with `Retry-After`. 0: no timeout."""

    # Portal users' JWTs: HS256 with a shared secret, or RS256/ES256 from a JWKS URL.
    jwt_secret: SecretStr | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwt_admin_claim: str = "role"
    jwt_admin_value: str = Field(default="admin", min_length=1)
    jwt_jwks_ttl_seconds: float = Field(default=300.0, ge=30, le=86_400)
    service_token_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    service_token_cache_size: int = Field(default=10_000, ge=1, le=1_000_000)

    # Stripe.
    stripe_secret_key: SecretStr | None = None
    allow_test_keys: bool = False
    """Production refuses a test-mode Stripe secret key (`sk_test_…`, `rk_test_…`) unless this is
    true (a staging deploy, `make bench`)."""
    stripe_publishable_key: str | None = None
    stripe_tax: bool = False
    """Stripe Tax computes sales tax / VAT on every top-up (Checkout, Elements, auto top-up), on
    top of the amount (prices are tax-exclusive): the credit is the amount before tax, the tax
    goes to the ledger's `tax_payable`. Needs Stripe Tax enabled and registrations set up in
    the Stripe Dashboard (README: Invoices and tax)."""
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None
    stripe_timeout_seconds: float = Field(default=10.0, gt=0, le=10.0)
    stripe_max_network_retries: int = Field(default=2, ge=0, le=5)
    stripe_webhook_tolerance_seconds: int = Field(default=300, ge=1, le=600)
    stripe_deadline_seconds: float = Field(default=12.0, gt=0, le=120.0)
    """All of one request's (or one job run's) Stripe work must end within this many seconds;
    past it the answer is 503 `payment_provider_unavailable` with `Retry-After`
    (`app.stripe_gateway.deadline`)."""

    # Portal and purchase rules.
    portal_url: str = "http://localhost:5173"
    cors_origins: list[str] = Field(default_factory=lambda: ["http://localhost:5173"])
    topup_min: Decimal = Decimal("1.00")
    topup_max: Decimal = Decimal("10000.00")
    topup_presets: list[Decimal] = Field(
        default_factory=lambda: [
            Decimal(v) for v in ("10", "20", "50", "100", "200", "500", "1000", "2000", "5000")
        ]
    )
    max_pending_orders: int = Field(default=5, ge=1, le=100)
    max_key_limits_per_user: int = Field(default=100, ge=1, le=10_000)
    """API-key spend limits a user may set themselves (operators' limits do not count)."""
    checkout_ttl_minutes: int = Field(default=30, ge=30, le=1440)
    refund_window_days: int = Field(default=30, ge=0, le=365)
    refund_auto_approve_max: Decimal = Decimal("0")

    # Gateway.
    hold_max_ttl_seconds: int = Field(default=3600, ge=1, le=3600)
    hold_default_ttl_seconds: int = Field(default=600, ge=1, le=3600)
    max_amount_micros: int = Field(default=MAX_AMOUNT_MICROS, ge=1, le=MAX_AMOUNT_MICROS)
    capture_max_hold_multiple: float = Field(default=2.0, ge=1.0, le=1000.0)
    """A capture may charge at most this multiple of its hold's amount (422
    `capture_exceeds_hold` past it, nothing applied): a leaked service token cannot drive a
    wallet far below zero through captures of small holds."""

    # Credit lots.
    paid_credit_expiry_days: int | None = Field(default=None, ge=1, le=3650)
    """Paid credit (a top-up, manual or auto) expires this many days after it is bought; unset:
    never. Grants and promo codes carry their own expiry; adjustments never expire."""
    credit_expiry_warning_days: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [30, 7, 1]
    )
    """`credits.expiring` goes out this many days before a lot with a remainder expires, once
    per lot and number (`BILLING_CREDIT_EXPIRY_WARNING_DAYS=30,7,1`; empty: none)."""

    # Per-user rate limits on the portal's routes (`limits` notation: "10/minute;60/hour"),
    # kept in process memory or, for several instances, in a shared storage such as
    # "redis://host:6379" (see the README). The gateway's routes have none.
    rate_limit_enabled: bool = True
    rate_limit_storage_uri: SecretStr = SecretStr("memory://")
    rate_limit_purchase: str = "10/minute;60/hour"
    rate_limit_resume: str = "30/minute"
    rate_limit_cancel: str = "30/minute"
    rate_limit_sync: str = "20/minute;200/hour"
    rate_limit_payment_result: str = "60/minute"
    rate_limit_refund_request: str = "5/minute;20/day"
    rate_limit_usage_report: str = "30/minute;300/hour"
    """The usage summary and CSV export (the user's and operators'), per user: each reads up to
    400 days of usage records."""
    rate_limit_promo_redeem: str = "5/minute;20/day"
    """Promo code redemptions, per user, whatever their outcome: codes cannot be guessed."""
    # Daily caps per user, counted in the database over the last 24 hours: orders (each makes
    # one Stripe object, whether it is later paid, canceled or not), and declined payment
    # attempts (card testing).
    rate_limit_stripe_objects_per_day: int = Field(default=50, ge=1)
    rate_limit_failed_payments_per_day: int = Field(default=10, ge=1)

    # HTTP.
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    forwarded_allow_ips: str = "127.0.0.1"
    metrics_token: SecretStr | None = None
    keep_alive_seconds: int = Field(default=75, ge=1, le=3600)
    """How long an idle keep-alive connection stays open. Longer than clients' own idle timeout
    (httpx: 5 s), so the client always closes first: a server closing an idle connection just as
    the client reuses it drops that request (the gateway saw ~1 in 600 under load at 5 s)."""

    shutdown_grace_seconds: float = Field(default=20.0, ge=0, le=600)
    """On SIGTERM `torouter-billing serve` stops accepting at once, then gives in-flight
    requests and running jobs this long to finish before it exits (`app/serve.py`)."""

    # Periodic jobs.
    jobs_enabled: bool = True
    reconcile_interval_seconds: float = Field(default=60.0, gt=0)
    reconcile_min_age_seconds: float = Field(default=180.0, ge=0)
    hold_expiry_interval_seconds: float = Field(default=15.0, gt=0)
    lot_expiry_interval_seconds: float = Field(default=60.0, gt=0)
    """How often the expiry job posts expired credit lots' remainders out of the balance (no
    debit draws from an expired lot meanwhile: the job only settles the books)."""
    credit_notice_interval_seconds: float = Field(default=300.0, gt=0)
    """How often the credit-notices job sends due `credits.expiring` / `credits.expired`."""
    auto_topup_interval_seconds: float = Field(default=30.0, gt=0)
    """How often the auto top-up job charges recorded attempts (a debit that records one also
    starts a charge at once in the background; the job is the safety net)."""

    # Notifications (issue 12): email over SMTP and signed webhooks, sent by the
    # `notifications` job from the outbox; a channel without its setting is skipped.
    smtp_url: SecretStr | None = None
    """`smtp://[user:password@]host:port` (STARTTLS when offered) or `smtps://…` (TLS)."""
    smtp_from: str = "ToRouter Billing <billing@localhost>"
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    notify_webhook_url: str | None = None
    notify_webhook_secret: SecretStr | None = None
    notify_webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=30)
    notify_interval_seconds: float = Field(default=5.0, gt=0)
    notify_batch_size: int = Field(default=50, ge=1, le=1000)
    notify_max_attempts: int = Field(default=12, ge=1, le=100)
    """Attempts per channel before it is marked `failed` (backoff 30 s doubling, capped at
    1 h: about 5 hours in all at the default)."""

    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("topup_min", "topup_max", "refund_auto_approve_max", mode="before")
    @classmethod
    def _amount_grammar(cls, value: object) -> object:
        # The same grammar as a user's amount, before `Decimal` sees the text.
        if isinstance(value, str):
            parse_amount(value)
        return value

    @field_validator("topup_presets", mode="before")
    @classmethod
    def _amounts_grammar(cls, value: object) -> object:
        if isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    parse_amount(item)
        return value

    @field_validator("topup_min", "topup_max", "refund_auto_approve_max")
    @classmethod
    def _two_decimals(cls, value: Decimal) -> Decimal:
        return _two_decimal_amount(value)

    @field_validator("topup_presets")
    @classmethod
    def _two_decimal_presets(cls, value: list[Decimal]) -> list[Decimal]:
        return [_two_decimal_amount(item) for item in value]

    @field_validator(
        "rate_limit_purchase",
        "rate_limit_resume",
        "rate_limit_cancel",
        "rate_limit_sync",
        "rate_limit_payment_result",
        "rate_limit_refund_request",
        "rate_limit_usage_report",
        "rate_limit_promo_redeem",
    )
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit such as '10/minute;60/hour': {exc}") from exc
        return value

    @field_validator("credit_expiry_warning_days", mode="before")
    @classmethod
    def _warning_days(cls, value: object) -> object:
        # The environment says "30,7,1" (or, as pydantic-settings writes lists, "[30, 7, 1]");
        # a list passes through.
        if isinstance(value, str):
            text = value.strip().removeprefix("[").removesuffix("]")
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("credit_expiry_warning_days")
    @classmethod
    def _warning_days_range(cls, value: list[int]) -> list[int]:
        if any(not 1 <= days <= 3650 for days in value):
            raise ValueError("each number of days must be between 1 and 3650")
        return sorted(set(value), reverse=True)

    @field_validator("database_url")
    @classmethod
    def _postgresql_only(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        scheme = url.partition("://")[0] if "://" in url else ""
        if scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
            got = f"a {scheme}:// URL" if scheme else "no URL scheme"
            raise ValueError(
                f"PostgreSQL is the only engine: expected {DATABASE_URL_EXPECTED}, got {got}"
            )
        return SecretStr("postgresql+asyncpg://" + url.partition("://")[2])

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("must be smtp://host:port or smtps://host:port")
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.topup_min > self.topup_max:
            raise ValueError("BILLING_TOPUP_MIN must not exceed BILLING_TOPUP_MAX")
        if self.notify_webhook_url is not None:
            notify_secret = self.notify_webhook_secret
            if notify_secret is None or len(notify_secret.get_secret_value()) < 16:
                raise ValueError(
                    "BILLING_NOTIFY_WEBHOOK_SECRET (at least 16 characters) is required "
                    "with BILLING_NOTIFY_WEBHOOK_URL"
                )
        if self.environment == "local":
            if self.jwt_secret is None and self.jwt_jwks_url is None:
                # Lets `make run` and `torouter-billing token` work out of the box; refused
                # anywhere but the local environment.
                self.jwt_secret = SecretStr(LOCAL_JWT_SECRET)
            return self
        if self.jwt_jwks_url is None:
            secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
            if (
                secret.lower() in _PLACEHOLDER_SECRETS
                or secret == LOCAL_JWT_SECRET
                or len(secret) < 32
            ):
                raise ValueError(
                    "BILLING_JWT_SECRET must be a real secret of at least 32 characters "
                    "(or set BILLING_JWT_JWKS_URL) outside the local environment "
                    "(BILLING_ENVIRONMENT=local for development)"
                )
        if self.environment == "production":
            if "database_url" not in self.model_fields_set:
                raise ValueError("BILLING_DATABASE_URL is required in production")
            self._refuse_unsafe_production()
        return self

    def _refuse_unsafe_production(self) -> None:
        if "*" in self.cors_origins:
            raise ValueError("BILLING_CORS_ORIGINS must list the portal's origins, not '*'")
        if self.stripe_configured:
            webhook = self.stripe_webhook_secret
            if webhook is None or not webhook.get_secret_value().strip():
                raise ValueError(
                    "BILLING_STRIPE_WEBHOOK_SECRET is required when Stripe is configured"
                )
        if self.stripe_api_base is not None and not _https_or_loopback(self.stripe_api_base):
            raise ValueError("BILLING_STRIPE_API_BASE must be https (or a loopback address)")
        if self.jwt_jwks_url is not None and not _https_or_loopback(self.jwt_jwks_url):
            raise ValueError("BILLING_JWT_JWKS_URL must be https (or a loopback address)")
        if self.notify_webhook_url is not None and not _https_or_loopback(self.notify_webhook_url):
            raise ValueError("BILLING_NOTIFY_WEBHOOK_URL must be https (or a loopback address)")
        if (
            self.stripe_secret_key is not None
            and self.stripe_secret_key.get_secret_value().startswith(_TEST_KEY_PREFIXES)
            and not self.allow_test_keys
        ):
            raise ValueError(
                "BILLING_STRIPE_SECRET_KEY is a test-mode key; production takes a live key "
                "(BILLING_ALLOW_TEST_KEYS=true for a deploy meant to take no real money)"
            )
        # Neither a shared secret nor a JWKS binds a token to this service: an identity
        # provider's keys sign the tokens of all its applications (and tenants).
        for name, value in (("ISSUER", self.jwt_issuer), ("AUDIENCE", self.jwt_audience)):
            if value is None or not value.strip():
                raise ValueError(
                    f"BILLING_JWT_{name} is required in production (the `{name[:3].lower()}` "
                    "claim the portal's tokens carry)"
                )

    @property
    def stripe_configured(self) -> bool:
        return self.stripe_secret_key is not None and bool(
            self.stripe_secret_key.get_secret_value()
        )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
