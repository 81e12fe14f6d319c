# Two commands do all the set-up on a fresh machine, each on its own:
#   make quickstart   install if needed, then run jobs/quickstart.yaml end to end (CPU, offline)
#   make test         install if needed, then lint (ruff), type-check (mypy) and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Ray on a single machine: bind every Ray process to loopback and keep token auth off, so a
# token file left by an embedded Ray never makes a later `ray start` demand one (HTTP 401).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_AUTH_MODE := disabled

.PHONY: install quickstart lint test bench clean-venv

install: $(STAMP)

# constraints.txt pins the CPU build of torch; without it pip pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/python -m orchestrator run jobs/quickstart.yaml

# ruff takes well under a second; mypy about 20 s cold (it reads torch's types), under 1 s warm.
lint: $(STAMP)
	$(BIN)/ruff check rnn orchestrator
	$(BIN)/mypy rnn orchestrator

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

clean-venv:
	rm -rf $(VENV)
