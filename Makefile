# Targets set up .venv on first use: `make demo` with the package alone (all
# that examples/demo.py imports), every other target with its dev extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.venv-stamp
DEMO_STAMP := $(VENV)/.demo-stamp
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
DOCS_STAMP := $(VENV)/.docs-stamp

.PHONY: demo test test-pure lint bench bench-quick bench-floors bench-servers docs all-pythons dist clean

$(VENV_STAMP):
	@echo "Setting up $(VENV) with $(PYTHON), and a current pip in it (editable installs from pyproject.toml need pip 21.3+)"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@touch $@

# The compiled build's sources: an install (editable) compiles them anew
# whenever one changes, so that the extension modules are never stale.
COMPILED := setup.py $(wildcard aiomempool/*.pxd) $(patsubst %.pxd,%.py,$(wildcard aiomempool/*.pxd))

$(DEMO_STAMP): pyproject.toml $(COMPILED) | $(VENV_STAMP)
	@echo "Installing the package into $(VENV), editable and without extras: all that examples/demo.py imports (its hot modules compiled where a C compiler exists)"
	@$(BIN)/python -m pip install --quiet -e .
	@touch $@

# The package with the dev extra holds the demo's set-up too.
$(STAMP): pyproject.toml $(COMPILED) | $(VENV_STAMP)
	@echo "Installing the package with its dev extra into $(VENV) (pytest, hypothesis, anyio, uvloop, mypy, ruff, nox, build), its hot modules compiled where a C compiler exists: the tools of test, lint, dist and all-pythons"
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(DEMO_STAMP)

$(BENCH_STAMP): $(STAMP)
	@echo "Installing the bench extra into $(VENV) (matplotlib and the PyPI pool libraries): what make bench draws with and measures against"
	@$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $@

$(DOCS_STAMP): $(STAMP)
	@echo "Installing the docs extra into $(VENV) (mkdocs-material, mkdocstrings): what make docs builds the site with"
	@$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	@touch $@

## demo: a short tour of waiting, non-blocking and atomic allocations
demo: $(DEMO_STAMP)
	$(BIN)/python examples/demo.py

# redis-cli and redis-benchmark (Debian's redis-tools) drive the example
# servers in tests and benchmarks: installed when missing, as root with
# apt-get only; elsewhere one line says what goes without them ($(1)).
define redis_tools
	@missing=; \
	for tool in redis-cli redis-benchmark; do \
		command -v $$tool >/dev/null || missing="$$missing $$tool"; \
	done; \
	if [ -z "$$missing" ]; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's redis-tools (missing:$$missing): the example servers are driven with them"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null; } \
			|| echo "redis-tools did not install: $(1)"; \
	else \
		echo "Missing:$$missing; $(1) (as root: apt-get install redis-tools)"; \
	fi
endef

## test: every test, on the default python3, asyncio and uvloop
test: $(STAMP)
	$(call redis_tools,the server tests that need them will be skipped)
	$(BIN)/python -m pytest

## test-pure: every test on the pure-Python package (AIOMEMPOOL_NO_EXTENSIONS=1)
test-pure: $(STAMP)
	$(call redis_tools,the server tests that need them will be skipped)
	AIOMEMPOOL_NO_EXTENSIONS=1 $(BIN)/python -m pytest

## lint: ruff, mypy --strict and the import layers
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## bench: every benchmark on asyncio and uvloop, on the compiled build then
## the pure one, side by side, then the floors under the speed targets;
## updates docs/assets/benchmarks
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.builds
	$(BIN)/python -m benchmarks.floors

## bench-quick: a smoke run of the benchmarks; writes nothing into docs/
bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.builds --quick
	$(BIN)/python -m benchmarks.floors --quick

## bench-floors: what the benchmark loops cost around pools that do the
## least their kind can do (benchmarks/floors.py); updates
## docs/assets/benchmarks/floors.md
bench-floors: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.floors

## bench-servers: the example servers under redis-benchmark, beside a streams
## server and redis-server; updates docs/assets/benchmarks/servers.md and
## redraws the charts
bench-servers: $(BENCH_STAMP)
	$(call redis_tools,the server figures will be left out)
	$(BIN)/python -m benchmarks.servers
	$(BIN)/python -m benchmarks.charts

## docs: run the cookbook's recipes, then build the site strictly into site/
docs: $(DOCS_STAMP)
	@for recipe in docs/recipes/*.py; do \
		echo "$(BIN)/python $$recipe"; \
		$(BIN)/python "$$recipe" > /dev/null || exit 1; \
	done
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## all-pythons: the suite on CPython 3.10 to 3.13, and lint (nox)
all-pythons: $(STAMP)
	$(BIN)/nox --error-on-missing-interpreters

## dist: the sdist and the wheel into dist/, then a check of what each holds
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/python .ci/check_dist.py dist

clean:
	rm -rf $(VENV) .nox .pytest_cache .mypy_cache .ruff_cache .hypothesis site \
		dist build aiomempool.egg-info aiomempool/*.so
