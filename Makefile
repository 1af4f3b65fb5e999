# Every target sets up .venv (with the package and its dev tools) if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench bench-quick all-pythons clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: a short tour of waiting, non-blocking and atomic allocations
demo: $(STAMP)
	$(BIN)/python examples/demo.py

## test: every test, on the default python3, asyncio and uvloop
test: $(STAMP)
	$(BIN)/python -m pytest

## lint: ruff and mypy --strict
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## bench: the benchmarks, printing medians and ratios
bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

## all-pythons: the suite on CPython 3.10 to 3.13, and lint (nox)
all-pythons: $(STAMP)
	$(BIN)/nox --error-on-missing-interpreters

clean:
	rm -rf $(VENV) .nox .pytest_cache .mypy_cache .ruff_cache .hypothesis
