# herdless: `make run` starts the stack, `make test` runs every test. Both set themselves up.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint loadtest lock system-deps clean

# Every package at the version constraints.txt pins, so every machine runs what CI tested.
$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev,loadtest]'
	touch $(STAMP)

# Re-resolve pyproject.toml in a throw-away venv and rewrite constraints.txt: after changing a
# dependency, or to take upgrades. Then `make test` and commit both files.
lock:
	PYTHON=$(PYTHON) ./scripts/lock.sh

run: $(STAMP)
	./scripts/run.sh

# Binaries the tests drive for real. apt-get only when one is missing (and we are allowed to).
system-deps:
	@./scripts/system-deps.sh

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared
	$(VENV)/bin/pytest

# Starts the local stack if none is running, compares the strategies, prints the table.
loadtest: $(STAMP)
	./loadtest/make_loadtest.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy shared

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
