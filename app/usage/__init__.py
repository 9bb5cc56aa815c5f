"""The gateway's usage API: debits, batches of debits, holds, and wallet lookups."""
