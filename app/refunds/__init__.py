"""Refund requests, their review, Stripe refunds and disputes."""
