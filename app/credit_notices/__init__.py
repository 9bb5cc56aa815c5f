"""Notices before and when credit expires: `credits.expiring` some days before a lot with a
remainder expires (each number of days in `BILLING_CREDIT_EXPIRY_WARNING_DAYS` once per lot),
`credits.expired` when it has, through the notifications outbox. The `credit_notices` job
(`app/jobs/credit_notices.py`) sends what is due."""
