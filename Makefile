# Two commands a newcomer needs: `make demo` and `make test`. Everything else is for us.
#
# What the tests, lint and type-check run with is pinned in requirements/test.txt
# (`make lock` refreshes it), so a release elsewhere cannot turn main red.
# `make test-latest` runs the same checks on the newest releases, in a venv of
# its own, to see drift before it lands; `make test-matrix` runs `make test` on
# every supported Python found on PATH. See docs/testing.md.
PYTHON ?= python3
VENV   ?= .venv
LOCK   ?= requirements/test.txt
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# The pinned installer and locker; bumped by hand, like the lock.
PIP_VERSION := 26.3
UV_VERSION  := 0.13.9
SUPPORTED   := 3.11 3.12 3.13

# With a lock, every install is held to it (extras are a subset of what it pins);
# with LOCK= (test-latest) the newest releases are taken.
CONSTRAIN := $(if $(LOCK),-c $(LOCK),--upgrade --upgrade-strategy eager)

.PHONY: demo test test-latest test-matrix lock lint typecheck unit integration bench servers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(if $(LOCK),pip==$(PIP_VERSION),--upgrade pip)

# One stamp per set of extras, redone when pyproject.toml or the lock changes.
$(VENV)/.demo: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) install -q $(CONSTRAIN) -e '.[demo]'
	touch $@

$(VENV)/.test: pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) install -q $(CONSTRAIN) -e '.[all,test]'
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(BIN)/resilient demo

servers:
	@scripts/ensure-servers

lint: $(VENV)/.test
	$(BIN)/ruff check resilient tests bench examples scripts
	$(BIN)/ruff format --check resilient tests bench examples scripts

typecheck: $(VENV)/.test
	$(BIN)/mypy resilient

unit: $(VENV)/.test
	$(BIN)/pytest tests/unit

integration: $(VENV)/.test servers
	$(BIN)/pytest tests/integration

test: $(VENV)/.test servers lint typecheck
	$(BIN)/pytest

# The whole suite on the newest releases of everything (no lock), in .venv-latest.
# Its stamp is redone on every run, so each run takes whatever is newest then.
test-latest:
	rm -f .venv-latest/.test
	$(MAKE) test VENV=.venv-latest LOCK=

# `make test` on each supported Python that runs here (pyenv: PYENV_VERSION=3.11.7:3.12.1:3.13.0),
# each in .venv-3.X from the same lock; a Python that is missing is named and skipped.
test-matrix:
	@ran=""; for v in $(SUPPORTED); do \
	  if python$$v -c 'import sys' >/dev/null 2>&1; then \
	    echo "== Python $$v"; $(MAKE) test PYTHON=python$$v VENV=.venv-$$v || exit 1; ran="$$ran $$v"; \
	  else echo "== Python $$v: not found, skipped"; fi; \
	done; [ -n "$$ran" ] || { echo "test-matrix: no supported Python found" >&2; exit 1; }; \
	echo "test-matrix: passed on$$ran"

# Re-resolve the lock to the newest releases that fit pyproject.toml, for every
# supported Python at once (uv's universal resolution writes the markers).
lock: | $(BIN)/python
	$(PIP) install -q uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
	  --upgrade --quiet -o requirements/test.txt

bench: $(VENV)/.test
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .venv-latest $(foreach v,$(SUPPORTED),.venv-$(v)) .pytest_cache .mypy_cache \
	  .ruff_cache build dist *.egg-info
