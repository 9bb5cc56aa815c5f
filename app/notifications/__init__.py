"""The notifications outbox: events written in the money transaction (`service.enqueue`, or the
SQL step of `sql.py` in the gateway's statements), delivered by the `notifications` job by email
and signed webhook, at least once, each with a stable event id."""
