"""Top-up orders: history, detail, resume, cancel, sync."""
