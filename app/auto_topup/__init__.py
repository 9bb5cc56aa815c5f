"""Auto top-up: the user's settings (`GET/PUT /v1/auto-topup`) and the rules that keep a failing
card from looping (`rules.py`). The trigger and the charging job are wired into the debit paths
and orders by issue 12's integration."""
