# herdless: `make run` starts the stack, `make test` runs every test. Both set themselves up.
PYTHON ?= python3
VENV := .venv
# Two installs: `make run` and `make loadtest` need the service and the load tester; `make test`
# and `make lint` add the test and lint tools (pytest, schemathesis, mypy, ruff...) on top.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test lint loadtest lock system-deps cachetests-deps clean

# Every package at the version constraints.txt pins, so every machine runs what CI tested.
# One line before each step and one after, so that a first install (about a minute) is not silence.
$(RUN_STAMP): pyproject.toml constraints.txt
	@echo "herdless: installing into $(VENV) (the first time takes about a minute; later runs skip this)"
	@test -x $(VENV)/bin/python || { echo "herdless: [1/3] creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "herdless: [2/3] upgrading pip"
	@$(VENV)/bin/pip install --quiet --upgrade pip
	@echo "herdless: [3/3] installing herdless, its load tester and their pinned dependencies (constraints.txt)"
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[loadtest]'
	@touch $(RUN_STAMP)
	@echo "herdless: installed"

$(DEV_STAMP): $(RUN_STAMP)
	@echo "herdless: adding the test and lint tools (pytest, schemathesis, mypy, ruff...)"
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev,loadtest]'
	@touch $(DEV_STAMP)

# Re-resolve pyproject.toml in a throw-away venv and rewrite constraints.txt: after changing a
# dependency, or to take upgrades. Then `make test` and commit both files.
lock:
	PYTHON=$(PYTHON) ./scripts/lock.sh

# One simple command, so that make runs it without a shell: the supervisor is make's own child
# and gets the SIGTERM make passes on.
run: $(RUN_STAMP)
	./scripts/run.sh

# Binaries the tests drive for real. apt-get only when one is missing (and we are allowed to).
system-deps:
	@./scripts/system-deps.sh

# The HTTP cache test suite (npm http-cache-tests, pinned by its package-lock.json), which
# `python -m loadtest cachetests` and tests/e2e/test_httpcache_suite.py run through a proxy namespace.
SUITE_STAMP := tests/httpcache_suite/node_modules/.package-lock.json
$(SUITE_STAMP): tests/httpcache_suite/package.json tests/httpcache_suite/package-lock.json
	cd tests/httpcache_suite && npm ci --no-audit --no-fund --loglevel=error
	touch $(SUITE_STAMP)

cachetests-deps: $(SUITE_STAMP)

test: $(DEV_STAMP) system-deps cachetests-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared
	$(VENV)/bin/pytest

# Starts the local stack if none is running, compares the strategies, prints the table.
loadtest: $(RUN_STAMP)
	./loadtest/make_loadtest.sh

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy shared

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
