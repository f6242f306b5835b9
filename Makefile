# chatd's commands. Each target installs what it needs first, so a fresh
# machine needs only `make run` or `make test`. `make help` lists them.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per install step, so `make run` never waits on the test, lint or
# bench extras, and each extra is installed once, when first needed.
STAMP := $(VENV)/.installed
EXTRA_STAMP := $(VENV)/.installed-
CONFIG ?= config/chatd.toml
LINT_PATHS := chatd tests gunicorn.conf.py $(wildcard bench)

.PHONY: help install run test lint bench check-config clean

## help - list the targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

# What serving needs: chatd and its install_requires.
$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

# An extra (test, lint, bench) on top: $(EXTRA_STAMP)test and so on.
$(EXTRA_STAMP)%: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[$*]'
	touch $@

## install - make .venv and install chatd with its test, lint and bench extras
install: $(EXTRA_STAMP)test $(EXTRA_STAMP)lint $(EXTRA_STAMP)bench

## run - start chatd under gunicorn on $(CONFIG) (installs only what serving needs)
run: $(STAMP)
	$(BIN)/chatd --config $(CONFIG)

## test - run the test suite (unit and live gunicorn tests)
test: $(EXTRA_STAMP)test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint - ruff over the package and the tests
lint: $(EXTRA_STAMP)lint
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

## bench - benchmark chatd against the direct upstream (nginx + wrk)
bench: $(EXTRA_STAMP)bench
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## check-config - resolve $(CONFIG) and gunicorn.conf.py, exit non-zero on a problem
check-config: $(STAMP)
	$(BIN)/chatd check-config --config $(CONFIG)
	CHATD_CONFIG=$(CONFIG) $(BIN)/gunicorn -c gunicorn.conf.py --check-config

## clean - remove the virtualenv and caches
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache chatd.egg-info
