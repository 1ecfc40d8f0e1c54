# Two commands work on a fresh machine: `make demo` and `make test`.
# Each creates the virtualenv and installs what it needs (torch first, so a CPU build is used).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PORT ?= 8000
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format install clean browser

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[engine,dev,serve]"
	touch $(STAMP)

install: $(STAMP)

# `make demo PORT=8010` for another port; `make demo ARGS=--fresh` starts from an empty data dir.
demo: $(STAMP)
	$(BIN)/mimochat demo --port $(PORT) $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The console's browser test drives Debian's Chromium (never a browser download), with the Noto
# CJK fonts so that Chinese renders (the test fails if it shows as boxes). Installed here when
# missing and we may (root with apt); otherwise that one test skips and says why.
browser:
	@if { [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi 'Noto.*CJK'; } \
		&& [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and fonts-noto-cjk for the browser test"; \
		( apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium fonts-noto-cjk >/dev/null ) \
		|| echo "chromium could not be installed: the browser test will be skipped"; \
	fi

test: lint browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
