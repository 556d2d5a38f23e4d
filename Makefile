# Two commands a newcomer needs: `make demo` and `make test`. Everything else is for us.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test lint typecheck unit integration bench servers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One stamp per set of extras, redone when pyproject.toml changes.
$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[demo]'
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[all,test]'
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(BIN)/resilient demo

servers:
	@scripts/ensure-servers

lint: $(VENV)/.test
	$(BIN)/ruff check resilient tests bench examples
	$(BIN)/ruff format --check resilient tests bench examples

typecheck: $(VENV)/.test
	$(BIN)/mypy resilient

unit: $(VENV)/.test
	$(BIN)/pytest tests/unit

integration: $(VENV)/.test servers
	$(BIN)/pytest tests/integration

test: $(VENV)/.test servers lint typecheck
	$(BIN)/pytest

bench: $(VENV)/.test
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
