"""Helpers the tests of a domain (and its neighbours) import: one module per domain."""
