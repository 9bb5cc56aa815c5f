"""Stripe webhook deliveries."""
