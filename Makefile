# chatd's commands. Each target installs what it needs first, so a fresh
# machine needs only `make run` or `make test`. `make help` lists them.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/chatd.toml
LINT_PATHS := chatd tests gunicorn.conf.py $(wildcard bench)

.PHONY: help install run test lint bench check-config clean

## help - list the targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint,bench]'
	touch $(STAMP)

## install - make .venv and install chatd with its test, lint and bench extras
install: $(STAMP)

## run - start chatd under gunicorn on $(CONFIG)
run: $(STAMP)
	$(BIN)/chatd --config $(CONFIG)

## test - run the test suite (unit and live gunicorn tests)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint - ruff over the package and the tests
lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

## bench - benchmark chatd against the direct upstream (nginx + wrk)
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## check-config - resolve $(CONFIG) and gunicorn.conf.py, exit non-zero on a problem
check-config: $(STAMP)
	$(BIN)/chatd check-config --config $(CONFIG)
	CHATD_CONFIG=$(CONFIG) $(BIN)/gunicorn -c gunicorn.conf.py --check-config

## clean - remove the virtualenv and caches
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache chatd.egg-info
