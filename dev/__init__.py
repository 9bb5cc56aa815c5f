"""Development tools, run from a checkout: `make run` (`python -m dev.run`) and the Stripe
sandbox it starts (`python -m dev.sandbox`). Never shipped: the wheel and the image hold `app/`
only, and nothing in `app/` imports this package."""
