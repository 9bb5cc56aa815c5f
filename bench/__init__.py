"""Local measurements: `make bench` (or `python -m bench`)."""
