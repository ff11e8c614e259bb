# `make test` is the one command that checks everything: lint, types, the whole test suite.
PYTHON ?= python3
NODE_DEPS := tests/interop/node/node_modules/.package-lock.json

.PHONY: test dev lint typecheck pytest bench-smoke

test: dev lint typecheck pytest bench-smoke

dev: $(NODE_DEPS)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'

$(NODE_DEPS): tests/interop/node/package.json tests/interop/node/package-lock.json
	cd tests/interop/node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

lint:
	$(PYTHON) -m ruff check src tests bench
	$(PYTHON) -m ruff format --check src tests bench
	$(PYTHON) -c "from importlinter.cli import lint_imports_command; lint_imports_command()"

typecheck:
	$(PYTHON) -m mypy

pytest:
	$(PYTHON) -m pytest

# The benchmark harness end to end on a few hundred connections (checks delivery, not speed).
bench-smoke:
	$(PYTHON) -m pytest bench/test_smoke.py -q
