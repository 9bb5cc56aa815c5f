"""Settings: production unless told otherwise, and production refuses what is unsafe."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app import cli
from app.config import LOCAL_JWT_SECRET, Settings, get_settings

REAL_SECRET = "r" * 48
PRODUCTION = {
    "jwt_secret": REAL_SECRET,
    "jwt_issuer": "https://id.torouter.example/",
    "jwt_audience": "torouter-billing",
}
"""The least a production deploy must say."""


@pytest.fixture(autouse=True)
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No `BILLING_*` variable: what a fresh deploy sees."""
    for name in ("BILLING_ENVIRONMENT", "BILLING_JWT_SECRET", "BILLING_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


PRODUCTION_DATABASE = "postgresql://billing@db.internal/billing"


def _settings(**values: Any) -> Settings:
    values.setdefault("database_url", PRODUCTION_DATABASE)
    return Settings(_env_file=None, **values)


def test_billing_environment_defaults_to_production() -> None:
    assert _settings(**PRODUCTION).environment == "production"


@pytest.mark.parametrize("secret", [None, "", "changeme", "short", LOCAL_JWT_SECRET])
def test_production_refuses_a_placeholder_or_missing_jwt_secret(secret: str | None) -> None:
    with pytest.raises(ValidationError, match="BILLING_JWT_SECRET"):
        _settings(jwt_secret=secret)


def test_production_accepts_a_jwks_instead_of_a_secret() -> None:
    settings = _settings(
        jwt_jwks_url="https://id.example/.well-known/jwks.json",
        jwt_issuer="https://id.example/",
        jwt_audience="torouter-billing",
    )
    assert settings.jwt_secret is None


def test_only_the_local_environment_installs_the_development_secret() -> None:
    local = _settings(environment="local")
    assert local.jwt_secret is not None
    assert local.jwt_secret.get_secret_value() == LOCAL_JWT_SECRET


def test_production_refuses_a_wildcard_cors_origin() -> None:
    with pytest.raises(ValidationError, match="CORS"):
        _settings(**PRODUCTION, cors_origins=["https://portal.example", "*"])


def test_production_refuses_stripe_without_a_webhook_secret() -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        _settings(**PRODUCTION, stripe_secret_key="sk_live_x")
    assert _settings(
        **PRODUCTION, stripe_secret_key="sk_live_x", stripe_webhook_secret="whsec_x"
    ).stripe_configured


@pytest.mark.parametrize(
    ("api_base", "accepted"),
    [
        ("https://api.stripe.com", True),
        ("http://127.0.0.1:12111", True),
        ("http://[::1]:12111", True),
        ("http://localhost:12111", True),
        ("http://stripe-mock.internal:12111", False),
        ("http://10.0.0.5", False),
        ("ftp://127.0.0.1", False),
    ],
)
def test_production_refuses_a_non_https_stripe_api_base_that_is_not_loopback(
    api_base: str, accepted: bool
) -> None:
    values = {**PRODUCTION, "stripe_api_base": api_base}
    if accepted:
        assert _settings(**values).stripe_api_base == api_base
    else:
        with pytest.raises(ValidationError, match="STRIPE_API_BASE"):
            _settings(**values)


@pytest.mark.parametrize("value", ["9e999990", "1e299999", "NaN", "-1", "10.001"])
def test_a_hostile_top_up_bound_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_TOPUP_MAX", value)
    with pytest.raises(ValidationError, match="topup_max"):
        _settings(environment="local")


def test_the_openapi_command_needs_no_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "OPENAPI_PATH", tmp_path / "openapi.json")
    assert cli.main(["openapi"]) == 0
    assert cli.main(["openapi", "--check"]) == 0


def test_a_production_command_without_settings_explains_itself(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("BILLING_DATABASE_URL", PRODUCTION_DATABASE)
    try:
        assert cli.main(["ledger-verify"]) == 2
    finally:
        get_settings.cache_clear()
    assert "BILLING_ENVIRONMENT=local" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url", ["sqlite+aiosqlite:///./billing.db", "sqlite:///:memory:", "mysql://db/billing", "x"]
)
def test_a_database_url_other_than_postgresql_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("BILLING_ENVIRONMENT", "local")
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    try:
        assert cli.main(["migrate"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        "torouter-billing: refused to start: BILLING_DATABASE_URL: PostgreSQL is the only engine"
    )
    assert "expected postgresql+asyncpg://user:password@host:5432/dbname" in err


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
def test_a_postgresql_url_is_read_as_asyncpg(scheme: str) -> None:
    settings = Settings(_env_file=None, environment="local", database_url=f"{scheme}://u@h/db")
    assert settings.database_url.get_secret_value() == "postgresql+asyncpg://u@h/db"


def test_production_requires_a_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BILLING_DATABASE_URL", raising=False)
    with pytest.raises(ValidationError, match="BILLING_DATABASE_URL is required in production"):
        Settings(_env_file=None, environment="production", jwt_secret="s" * 40)


def _record_serve(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Make `serve` record its uvicorn config instead of serving."""
    from app import serve

    calls: list[dict[str, Any]] = []

    def run(self: serve.GracefulServer, sockets: Any = None) -> None:
        calls.append(vars(self.config))

    monkeypatch.setattr(serve.GracefulServer, "run", run)
    return calls


def test_forwarded_ips_come_from_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_serve(monkeypatch)
    settings = _settings(**PRODUCTION, forwarded_allow_ips="10.0.0.1,10.0.0.2")
    args = cli.build_parser().parse_args(["serve", "--no-migrate"])
    assert isinstance(args, argparse.Namespace)
    cli.cmd_serve(args, settings)
    assert calls[0]["forwarded_allow_ips"] == "10.0.0.1,10.0.0.2"
    dockerfile = (cli.ROOT / "Dockerfile").read_text()
    assert "forwarded-allow-ips" not in dockerfile


def test_serve_keeps_idle_connections_longer_than_clients_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn's default (5 s) equals httpx's idle expiry: the server closing an idle
    connection just as the gateway reuses it dropped ~1 request in 600 under load."""
    calls = _record_serve(monkeypatch)
    args = cli.build_parser().parse_args(["serve", "--no-migrate"])
    cli.cmd_serve(args, _settings(**PRODUCTION))
    assert calls[0]["timeout_keep_alive"] == 75
    cli.cmd_serve(args, _settings(**PRODUCTION, keep_alive_seconds=30))
    assert calls[1]["timeout_keep_alive"] == 30


SMTP_URL = "smtp://mailer:smtp-pw-4242@mail.example:587"
DATABASE_URL = "postgresql+asyncpg://billing:db-pw-4242@db.example:5432/billing"
STORAGE_URI = "redis://:redis-pw-4242@redis.example:6379/0"


def test_printing_the_settings_shows_no_password() -> None:
    settings = _settings(
        **PRODUCTION,
        smtp_url=SMTP_URL,
        database_url=DATABASE_URL,
        rate_limit_storage_uri=STORAGE_URI,
    )
    for shown in (repr(settings), str(settings), settings.model_dump_json(), f"{settings}"):
        for password in ("smtp-pw-4242", "db-pw-4242", "redis-pw-4242", REAL_SECRET):
            assert password not in shown
    assert settings.smtp_url is not None
    assert settings.smtp_url.get_secret_value() == SMTP_URL
    assert settings.database_url.get_secret_value() == DATABASE_URL
    assert settings.rate_limit_storage_uri.get_secret_value() == STORAGE_URI


def test_a_settings_refusal_is_one_line_that_quotes_no_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # pydantic's message quotes the input (every BILLING_* value) unless told not to.
    get_settings.cache_clear()
    monkeypatch.setenv("BILLING_DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("BILLING_STRIPE_SECRET_KEY", "sk_live_pw4242")
    monkeypatch.setenv("BILLING_SMTP_URL", SMTP_URL)
    try:
        assert cli.main(["ledger-verify"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    for secret in ("db-pw-4242", "sk_live_pw4242", "smtp-pw-4242"):
        assert secret not in err
    refusals = [line for line in err.splitlines() if "BILLING_JWT_SECRET" in line]
    assert len(refusals) == 1
    assert refusals[0].startswith("torouter-billing: refused to start: BILLING_JWT_SECRET must")
    assert "BILLING_ENVIRONMENT=local" in err


@pytest.mark.parametrize("key", ["sk_test_51Hx", "rk_test_51Hx"])
def test_production_refuses_a_stripe_test_key_unless_told_to_allow_it(key: str) -> None:
    stripe = {"stripe_secret_key": key, "stripe_webhook_secret": "whsec_x"}
    with pytest.raises(ValidationError, match="BILLING_ALLOW_TEST_KEYS") as refused:
        _settings(**PRODUCTION, **stripe)
    assert len(refused.value.errors()) == 1
    assert _settings(**PRODUCTION, **stripe, allow_test_keys=True).stripe_configured
    assert _settings(**PRODUCTION, stripe_secret_key="sk_live_51Hx", stripe_webhook_secret="w")
    assert _settings(**PRODUCTION | {"environment": "test"}, **stripe).stripe_configured
    assert _settings(environment="local", **stripe).stripe_configured


@pytest.mark.parametrize(
    "verification",
    [{"jwt_secret": REAL_SECRET}, {"jwt_jwks_url": "https://id.example/.well-known/jwks.json"}],
    ids=["secret", "jwks"],
)
@pytest.mark.parametrize("missing", ["jwt_issuer", "jwt_audience"])
def test_production_requires_the_jwt_issuer_and_audience(
    verification: dict[str, str], missing: str
) -> None:
    # A JWKS pins neither: its keys sign every token of the identity provider (every client
    # application, every tenant of a multi-tenant one), and nothing here binds them to one.
    values = {**PRODUCTION, **verification} | {missing: None}
    with pytest.raises(ValidationError, match=f"BILLING_{missing.upper()} is required") as refused:
        _settings(**values)
    assert len(refused.value.errors()) == 1
    with pytest.raises(ValidationError, match=f"BILLING_{missing.upper()} is required"):
        _settings(**values | {missing: "  "})
    assert _settings(**values | {"environment": "test"}).environment == "test"
    assert _settings(**{**PRODUCTION, **verification}).environment == "production"


def test_credit_expiry_warning_days_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _settings(**PRODUCTION).credit_expiry_warning_days == [30, 7, 1]
    monkeypatch.setenv("BILLING_CREDIT_EXPIRY_WARNING_DAYS", "1, 14,7,14")
    assert _settings(**PRODUCTION).credit_expiry_warning_days == [14, 7, 1]
    # the JSON form pydantic-settings writes for a list (a child process's environment)
    monkeypatch.setenv("BILLING_CREDIT_EXPIRY_WARNING_DAYS", "[30, 7, 1]")
    assert _settings(**PRODUCTION).credit_expiry_warning_days == [30, 7, 1]
    monkeypatch.setenv("BILLING_CREDIT_EXPIRY_WARNING_DAYS", "")
    assert _settings(**PRODUCTION).credit_expiry_warning_days == []
    for bad in ("0", "7,x", "3651"):
        monkeypatch.setenv("BILLING_CREDIT_EXPIRY_WARNING_DAYS", bad)
        with pytest.raises(ValidationError, match="credit_expiry_warning_days"):
            _settings(**PRODUCTION)
