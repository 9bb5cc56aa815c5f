"""Usage reports: a user's usage summed by day, model or API key, and the CSV export."""
