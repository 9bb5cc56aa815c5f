"""Top-ups with Stripe: purchase, resume, cancel, sync, the result page, fulfillment."""
