"""Low-balance alerts: the user's thresholds (`GET/PUT /v1/alerts`) and the crossing rule every
balance-changing path applies in its own transaction (`service.apply_balance_change` for the
ORM, `sql.balance_alert_ctes` for the gateway's PostgreSQL statements)."""
