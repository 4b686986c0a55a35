# The Makefile is the menu: `make help` lists what you can do.
# Fresh machine: `make demo` or `make test` sets everything up first.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
BENCH_CSV ?= data/household_45d_15min.csv
# The unix port's own default path (.frozen holds asyncio etc.) must stay on MICROPYPATH.
MICROPYPATH_TEST := $(CURDIR)/firmware:$(CURDIR)/tests/firmware:.frozen:~/.micropython/lib
MPY_TEST := MICROPYPATH='$(MICROPYPATH_TEST)' $(BIN)/micropython -X heapsize=2M \
	tests/firmware/mpy_runner.py
# Debian keeps mosquitto in /usr/sbin, which is not on a normal user's PATH.
MOSQUITTO_PATHS ?= /usr/sbin/mosquitto /usr/local/sbin/mosquitto
# pytest on 2 workers (tests/conftest.py keeps the rigs on one of them); 0: in-process.
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup
NATS_PATHS ?= /usr/sbin/nats-server /usr/local/sbin/nats-server /usr/bin/nats-server
CHROMIUM_PATHS ?= /usr/bin/chromium /usr/bin/chromium-browser

.PHONY: help setup check lint format typecheck mpy-cross test pytest test-mpy vectors openapi demo run flash \
	bench lock clean distclean

help: ## list the targets
	@echo "usage: make TARGET   (fresh machine: 'make demo' or 'make test')"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP) mosquitto-present nats-present chromium-present ## .venv with pinned deps (micropython, mpy-cross...), mosquitto, nats-server, chromium

# Re-installs only when the dependency lists change; the stamp makes `setup` ~instant.
$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "error: need Python >= 3.11 as '$(PYTHON)' (found: $$($(PYTHON) -V 2>&1))." >&2; \
		echo "       install it, or point at one: make setup PYTHON=python3.12" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
		echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; \
		rm -rf $(VENV); exit 1; }
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $@

# System programs: found, else installed with apt-get (tools/need.sh says how otherwise).
.PHONY: mosquitto-present nats-present chromium-present
mosquitto-present:
	@sh tools/need.sh mosquitto mosquitto "tests and the demo start a private broker" $(MOSQUITTO_PATHS)

# The NATS transport's tests and scenario start a private 3-node cluster (JetStream, MQTT).
nats-present:
	@sh tools/need.sh nats-server nats-server "the NATS tests start a private cluster" $(NATS_PATHS)

# The operator page's tests drive headless Chromium.
chromium-present:
	@sh tools/need.sh chromium chromium "the operator page's browser tests" $(CHROMIUM_PATHS)

# All three run even if one fails, so one pass shows every finding.
lint: setup ## ruff (lint + format check) and the project rules in tools/lint.py
	@rc=0; \
	for cmd in "$(BIN)/ruff check ." "$(BIN)/ruff format --check ." "$(BIN)/python tools/lint.py"; do \
		echo "$$cmd"; $$cmd || rc=1; \
	done; exit $$rc

format: setup ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: setup ## mypy --strict (config in pyproject.toml) on the CPython code
	$(BIN)/mypy protocol headend hil tools bench

# Compile into a temp dir so no .mpy lands next to the sources.
mpy-cross: setup ## compile every firmware file with mpy-cross (MicroPython syntax)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; n=0; bad=0; \
	while IFS= read -r -d '' f; do \
		n=$$((n + 1)); \
		$(BIN)/mpy-cross -o "$$tmp/out.mpy" "$$f" || { echo "mpy-cross failed: $$f" >&2; bad=1; }; \
	done < <(find firmware -name '*.py' -print0 | sort -z); \
	echo "mpy-cross: $$n firmware files compiled"; exit $$bad

check: lint typecheck mpy-cross ## lint + typecheck + mpy-cross: everything but the tests

pytest: setup ## only the CPython tests (CI=true: hypothesis "ci" profile, no skips)
	$(PYTEST)

test-mpy: setup ## run tests/firmware on the MicroPython binary
	$(MPY_TEST)

# Both suites run even if the first fails; pytest goes last so its summary closes the log.
test: check ## check, then the firmware tests on MicroPython, then pytest
	@log=$$(mktemp); trap 'rm -f "$$log"' EXIT; mpy=0; py=0; \
	echo "$(MPY_TEST)"; $(MPY_TEST) 2>&1 | tee "$$log" || mpy=$$?; \
	echo "$(PYTEST)"; $(PYTEST) || py=$$?; \
	grep -E '^FAILED|passed, [0-9]+ failed' "$$log" | sed 's/^/micropython: /' || true; \
	echo "make test: MicroPython suite exit $$mpy, pytest exit $$py"; \
	[ $$mpy -eq 0 ] && [ $$py -eq 0 ]

openapi: setup ## regenerate docs/openapi.json (the HTTP API's spec; a test checks it)
	$(BIN)/python -m headend.http.openapi > docs/openapi.json

vectors: setup ## regenerate protocol/vectors/*.jsonl
	$(BIN)/python -m protocol.vectors

demo: setup ## the main job end to end on real parts (MicroPython, mosquitto, head-end, SQLite)
	$(BIN)/python -m hil demo

# Extra options: make run ARGS='--boards 5 --speed 60 --dir var/stack'
run: setup ## broker + `headend serve` + 3 virtual boards, up until Ctrl-C; prints what to try
	$(BIN)/python -m hil stack $(ARGS)

# PORT: a serial device or socket://host:port; CONFIG: from `python -m tools.flash provision`.
FLASH_BOARD ?= esp32
BUNDLE ?= build/bundle
flash: setup ## build the firmware, deploy it: make flash PORT=/dev/ttyUSB0 CONFIG=DIR [ARGS=...]
	@if [ -z "$(PORT)" ] || [ -z "$(CONFIG)" ]; then \
		echo "error: give PORT=/dev/ttyUSB0 (or socket://host:port) and CONFIG=DIR (written by" \
			"python -m tools.flash provision); see python -m tools.flash --help" >&2; exit 2; fi
	$(BIN)/python -m tools.flash build --board $(FLASH_BOARD) -o $(BUNDLE)
	$(BIN)/python -m tools.flash deploy --port $(PORT) --bundle $(BUNDLE) --config $(CONFIG) $(ARGS)

bench: setup ## print the benchmark figures (wire, flash wear, ingest on SQLite)
	$(BIN)/python -m bench wire --csv $(BENCH_CSV)
	$(BIN)/python -m bench flash-wear
	$(BIN)/python -m bench ingest --meter-days 20000 --backend sqlite

# Resolves pyproject.toml afresh in a scratch venv; commit the result.
lock: ## re-resolve the dependencies and rewrite requirements.lock
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet -e '.[dev]'; \
	{ echo "# Written by 'make lock': pip freeze of a fresh resolve of pyproject.toml."; \
	  echo "# Used as constraints by 'make setup'; do not edit by hand."; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude-editable; } > requirements.lock
	@echo "requirements.lock rewritten: review the diff, then run make setup"

clean: ## remove caches and build artifacts (keeps .venv)
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name '*.egg-info' \) \
		-prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name '*.mpy' -type f -exec rm -f {} +
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist

distclean: clean ## clean, and remove .venv and var/ too
	rm -rf $(VENV) var
