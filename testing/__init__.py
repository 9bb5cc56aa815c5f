"""What the tests use but is not a test: the Stripe peer, pytest plugins (fixtures/),
helpers the tests import (helpers/, factories.py, contract.py), and the drivers of
`make fuzz` (fuzz/) and `make verify` (crash.py). Never imported by app/."""
