"""Spend limits per API key and per account, set from the portal and enforced by the gateway."""
