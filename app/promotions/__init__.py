"""Credit that is given, not bought: operators' grants to one user and campaign promo codes any
user redeems once. Each is a granted lot (`app.ledger.lots.credit`) posted from the
`promotions` account. The operators' routes are `app/admin/grants.py` and
`app/admin/promo_codes.py`; the portal's redemption is `router.py`."""
