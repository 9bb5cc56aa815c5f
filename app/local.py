"""`make run`: the service on 127.0.0.1:8000 with the embedded SQLite database, migrated first,
and a demo user's token printed so `/docs` can be tried at once."""

from __future__ import annotations

import os

from app.config import get_settings


def main() -> int:
    os.environ.setdefault("BILLING_ENVIRONMENT", "local")
    os.environ.setdefault("BILLING_LOG_JSON", "false")
    settings = get_settings()
    from app.auth.jwt import mint_token
    from app.cli import main as cli_main

    mint_token(settings, "demo-user", email="demo@example.com")
    mint_token(settings, "demo-admin", email="admin@example.com", admin=True)
    return cli_main(["serve", "--host", "127.0.0.1", "--port", os.environ.get("PORT", "8000")])


if __name__ == "__main__":
    raise SystemExit(main())
