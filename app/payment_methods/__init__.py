"""Saved cards: recorded when a payment with `setup_future_usage` succeeds, listed and removed
by the user, kept in step with Stripe's `payment_method.*` events."""
