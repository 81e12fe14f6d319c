# Two commands do all the set-up on a fresh machine, each on its own:
#   make quickstart   install if needed, then run jobs/quickstart.yaml end to end (CPU, offline)
#   make test         install if needed (Chromium too, as root), then lint (ruff), type-check (mypy) and
#                     run the whole test suite (`make test-fast`: the tier without Ray, browser or slow tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Ray on a single machine: bind every Ray process to loopback and keep token auth off, so a
# token file left by an embedded Ray never makes a later `ray start` demand one (HTTP 401).
# For this Makefile's own loopback runs only: a head other machines can reach keeps token
# authentication on (cluster.yaml; the README's "A cluster").
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_AUTH_MODE := disabled

.PHONY: install quickstart lint browser test test-fast bench clean-venv

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
	$(BIN)/ruff check rnn orchestrator bench tests
	$(BIN)/mypy rnn orchestrator tests/conftest.py tests/test_dispatch.py tests/test_local_backend.py

# The report's browser test opens report.html in headless Chromium (Debian's package). As root
# (CI on Debian) a missing chromium is installed here, and a failed install stops `make test`;
# as any other user the test is skipped and says why.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the report's browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "chromium is missing and this is not root: tests/test_report_browser.py will be skipped"; \
	fi

# PYTHONFAULTHANDLER: a crash of the test process prints every thread's stack, whenever it happens.
test: lint browser
	PYTHONFAULTHANDLER=1 $(BIN)/python -m pytest -q

# The fast tier: no Ray, no cluster, no browser, nothing marked slow (the markers are in pyproject.toml),
# on two pytest-xdist workers. The whole suite stays serial: its Ray tests size themselves to the machine.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not ray and not cluster and not browser and not slow"

bench: $(STAMP)
	$(BIN)/python -m bench

clean-venv:
	rm -rf $(VENV)
