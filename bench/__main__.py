"""`python -m bench`: the usage endpoint's requests per second and round trips per debit."""

from bench.usage_rps import main

raise SystemExit(main())
