# virtual-mcp developer entry points. Every target bootstraps .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck check bench bench-audit clean venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/virtual-mcp demo

# The suite runs on TEST_WORKERS processes (pytest-xdist): its tests mostly wait on loopback servers and child
# processes, so one more worker than cores keeps both cores busy. Compiled modules (and pytest's rewritten test
# modules) are cached under .venv/pycache even where PYTHONDONTWRITEBYTECODE is set: every worker and every
# `virtual-mcp serve` the tests start would otherwise compile the same sources again.
# The whole suite runs once per store (TEST_STORES): the embedded SQLite file and in-process locks, then PostgreSQL
# and Redis as replicas use them (tests/store_mode.py). `make test TEST_STORES=embedded` for one pass.
TEST_WORKERS ?= 3
TEST_STORES ?= embedded postgres
test: $(STAMP)
	scripts/system-packages
	for store in $(TEST_STORES); do \
		echo "== the suite on the $$store store"; \
		env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$(CURDIR)/$(VENV)/pycache \
			$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --store=$$store || exit 1; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff check virtual_mcp tests examples bench
	$(VENV)/bin/ruff format --check virtual_mcp tests examples bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(VENV)/.bench-installed

bench: $(VENV)/.bench-installed
	scripts/system-packages
	$(PY) -m bench.run

bench-audit: $(STAMP)
	$(PY) -m bench.audit_query

clean:
	rm -rf $(VENV) .virtual-mcp .mypy_cache .ruff_cache
