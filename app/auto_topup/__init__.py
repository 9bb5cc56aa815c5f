"""Auto top-up: the user's settings (`GET/PUT /v1/auto-topup`) and the rules that keep a failing
card from looping (`rules.py`), the trigger every spending statement runs (`trigger.py`) and the
charging (`charging.py`, scheduled by `app/jobs/`), subscribed to the ledger's balance changes,
to orders' crediting and to saved cards' removal by `app/wiring.py`."""
