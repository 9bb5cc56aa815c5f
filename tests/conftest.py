"""tests/ holds tests (`test_*.py`) and this file only. What they use lives in testing/: the
fixtures are pytest plugins in testing/fixtures/ (loaded below: the database, app and clients in
app.py, the Stripe peer in stripe_peer.py, the notification receivers in notifications.py), the
helpers they import in testing/helpers/ and testing/factories.py."""

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis's time limits measure the machine, not the code: a shared CI box that is busy makes
# input generation "too slow" and an example miss the 200 ms deadline, which says nothing of
# what is tested (speed is measured in bench/, never asserted by a test).
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

# Plain `assert`s in the helpers report their operands like the tests' own.
pytest.register_assert_rewrite("testing")

pytest_plugins = [
    "testing.fixtures.app",
    "testing.fixtures.stripe_peer",
    "testing.fixtures.notifications",
]
