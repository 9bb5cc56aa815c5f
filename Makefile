# The one way to do anything here. Every target works on a fresh machine with Python 3.11+ and
# make: uv is bootstrapped with pip into .tools/ when it is not on PATH, and .venv is built from
# uv.lock.

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := .tools/bin/uv
endif
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
BENCH_ARGS ?=

.PHONY: install run sandbox-pay sandbox-card test test-fast check format migrate openapi fuzz bench bench-ab verify verify-failover clean

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --quiet
	@touch $@

install: $(VENV)/.synced

# The service on 127.0.0.1:$${PORT:-8000} on BILLING_DATABASE_URL, or else on an embedded PostgreSQL
# started from the wheel with its data in .pgdata/ (kept across runs; stopped when this ends), and,
# without Stripe keys, the Stripe sandbox (dev/, never shipped).
# `make sandbox-pay ORDER=ord_… [DECLINE=1]` pays an order there.
run: install
	$(BIN)/python -m dev.run

ORDER ?=
sandbox-pay: install
	$(BIN)/python -m dev.sandbox pay $(ORDER) $(if $(DECLINE),--decline)

# `make sandbox-card USER_ID=<user_id> BEHAVIOR=declined [CODE=insufficient_funds]`: the user's saved
# card declines (or needs `authentication`, or `succeeds` again) the next time it is charged.
sandbox-card: install
	$(BIN)/python -m dev.sandbox card $(USER_ID) $(BEHAVIOR) $(if $(CODE),--decline-code $(CODE))

# Lint and types, then the whole suite on $(TEST_WORKERS) workers (pytest-xdist), each on its own
# database of one PostgreSQL: BILLING_TEST_DATABASE_URL when set, else the server answering on
# 127.0.0.1:5432, else an embedded one started from the wheel (testing/fixtures/app.py, dev/postgres.py).
test: install
	$(MAKE) --no-print-directory check
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The tests that need no database (money, periods, state machines, batch planning, signing,
# rendering): seconds, no server.
test-fast: install
	$(BIN)/pytest -q -p no:cacheprovider -m "not database" $(PYTEST_ARGS)

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Development targets: the service defaults to production, these say `local` unless told otherwise.
migrate: install
	BILLING_ENVIRONMENT=$${BILLING_ENVIRONMENT:-local} $(BIN)/torouter-billing migrate

openapi: install
	$(BIN)/torouter-billing openapi

# schemathesis against the served app (on the tests' PostgreSQL, the Stripe peer on loopback) as two users, an admin, the gateway and anonymous: --checks all, 100 examples
# per operation. FUZZ_ARGS passes more (e.g. --max-examples 300 --seed 1).
FUZZ_ARGS ?=
fuzz: install
	$(BIN)/python -m testing.fuzz $(FUZZ_ARGS)

# The gateway's hot path and the webhooks under load, as ratios against a yardstick measured in
# the same run (bench/RESULTS.md). Needs PostgreSQL on 127.0.0.1:5432 and wrk (installed with
# apt-get when missing and root). BENCH_ARGS="--only usage --seconds 5" runs a part.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# `make bench-ab BASE=/path/to/other/checkout`: the usage debit of this checkout (wallets with one
# lot and with three) against the other's (installed with its own `make install`), ABBA in one
# run, as ratios to each other and to the yardstick of each pass (bench/versions_ab.py, ~5 min).
BASE ?=
bench-ab: install
	$(BIN)/python -m bench.versions_ab --base $(BASE) $(BENCH_ARGS)

# The crash test: two `torouter-billing serve` processes on a fresh database (of BILLING_VERIFY_PG,
# else the server `make test` finds, the embedded one included) and the
# Stripe peer, paying, debiting, holding and refunding while a random instance is SIGKILLed and
# restarted (20 kills or 3 minutes), then the reconciler and the money invariants
# (testing/crash.py). VERIFY_ARGS passes more (e.g. --kills 40 --seconds 300 --seed 7).
VERIFY_ARGS ?=
verify: install
	$(BIN)/python -m testing.crash $(VERIFY_ARGS)

# The failover test (not part of `make test`): a pg_auto_failover monitor and three PostgreSQL 15
# nodes of the machine's Debian binaries (postgresql-15-auto-failover installed with apt-get when
# missing, as root) on 127.0.0.1:6000-6003 in a temporary folder, two instances on the multi-host
# URL under load; the primary SIGKILLed, then frozen with SIGSTOP, then the negative controls;
# checks that no acknowledged id is lost or doubled (testing/failover.py). About 5 minutes.
FAILOVER_ARGS ?=
verify-failover: install
	$(BIN)/python -m testing.failover $(FAILOVER_ARGS)

clean:
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache .fuzz .pgdata-test
