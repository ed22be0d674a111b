# Two commands for a newcomer on Debian 12: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := docker-registry skopeo erofs-utils apache2-utils openssl containerd golang-go golang-github-containerd-stargz-snapshotter-dev golang-github-vbatts-tar-split-dev golang-github-containers-storage-dev libdeflate0

.PHONY: demo test lint typecheck unit bench system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Installs the Debian packages the tests and the demo use, where they are missing (needs root or sudo).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing:$$missing"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(VENV)/.installed system-deps
	$(BIN)/python misc/demo.py

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench misc
	$(BIN)/ruff format --check src tests bench misc

typecheck: $(VENV)/.installed
	$(BIN)/mypy

test: $(VENV)/.installed system-deps lint typecheck
	$(BIN)/pytest -m "not slow"

bench: $(VENV)/.installed system-deps
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache demo-work
