"""Operators correct a wallet with a signed adjustment and a reason, once per idempotency key
(the route is `app/admin/adjustments.py`)."""
