"""Periodic jobs that run in every instance; each takes its rows with FOR UPDATE SKIP LOCKED."""
