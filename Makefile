# herdless: `make run` starts the stack, `make test` runs every test. Both set themselves up.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint loadtest system-deps clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,loadtest]'
	touch $(STAMP)

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
