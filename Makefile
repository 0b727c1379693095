# `make train` and `make test` work from a fresh clone: they create .venv when it is missing.
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.genlab-installed
ARGS   ?=
# Debian's Chromium, the browser the dashboard test drives (playwright cannot download its own
# offline); installed by apt-get, as root or through sudo.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv browser train test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { echo "chromium is missing and apt-get could not install it:" \
		"the dashboard test needs it (apt-get install chromium, as root)" >&2; exit 1; }

train: $(STAMP)
	$(VENV)/bin/genlab-train $(ARGS)

test: $(STAMP) browser
	$(VENV)/bin/python -m pytest -n 2 --dist worksteal --durations=15 $(ARGS)

test-fast: $(STAMP) browser
	$(VENV)/bin/python -m pytest -n 2 -m "not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/hadolint docker/Dockerfile

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
