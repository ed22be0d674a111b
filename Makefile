# Two commands for a newcomer on Debian 12: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The demo needs a registry, skopeo and the default eStargz compressor; the tests also need the reference
# tools, the Go libraries their verifiers are built from, the browser the dashboard is tested in, and
# the PostgreSQL several acceld nodes share.
DEMO_PACKAGES := docker-registry skopeo libdeflate0
TEST_PACKAGES := $(DEMO_PACKAGES) erofs-utils apache2-utils openssl containerd golang-go golang-github-containerd-stargz-snapshotter-dev golang-github-vbatts-tar-split-dev golang-github-containers-storage-dev golang-github-hanwen-go-fuse-dev runc chromium chromium-driver postgresql

# The benchmarks also run the references that no test needs: ctr-remote (eStargz end to end).
BENCH_PACKAGES := $(TEST_PACKAGES) stargz-snapshotter

.PHONY: demo test lint typecheck unit bench system-deps demo-deps bench-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Installs the Debian packages in $(1) that are missing (needs root or sudo).
define install_missing
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing:$$missing"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

# Everything the tests and the demo use.
system-deps:
	$(call install_missing,$(TEST_PACKAGES))

demo-deps:
	$(call install_missing,$(DEMO_PACKAGES))

bench-deps:
	$(call install_missing,$(BENCH_PACKAGES))

demo: $(VENV)/.installed demo-deps
	$(BIN)/python misc/demo.py

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench misc
	$(BIN)/ruff format --check src tests bench misc

typecheck: $(VENV)/.installed
	$(BIN)/mypy

test: $(VENV)/.installed system-deps lint typecheck
	$(BIN)/pytest

bench: $(VENV)/.installed bench-deps
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache demo-work
