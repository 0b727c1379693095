# `make train` and `make test` work from a fresh clone: they create .venv when it is missing.
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.genlab-installed
ARGS   ?=

.PHONY: venv train test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/genlab-train $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --durations=15 $(ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 -m "not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/hadolint docker/Dockerfile

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
