"""Billing profiles: who a user's invoices are made out to (legal name, address, tax IDs, PO
number) and whether they want invoices, mirrored to the user's Stripe Customer; and the Stripe
Customer of a user (`repository.stripe_customer_id`)."""
