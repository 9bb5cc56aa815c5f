"""Low-balance alerts: the user's thresholds (`GET/PUT /v1/alerts`) and the crossing rule every
balance-changing path applies in its own transaction (`sql.balance_alert_ctes`, run through
`app.ledger.balance_events`, to which `app/wiring.py` subscribes it)."""
