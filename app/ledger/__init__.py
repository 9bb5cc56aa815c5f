"""The double-entry ledger: every credit and debit in the project goes through `post()`."""
