"""Operator endpoints (JWT with the admin role)."""
