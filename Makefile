# Everything a fresh machine needs is set up by these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTANCE ?= one

.PHONY: run test test-localstack soak lint typecheck check bench clean venv system-deps
ifndef LOCALSTACK_PORT
LOCALSTACK_PORT := $(shell $(PYTHON) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
endif

# `make run` installs only what running needs; the test targets add the dev extras
# (moto, mypy, hypothesis, atheris...). pip's output goes to a log shown on failure.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PIP_LOG := $(VENV)/pip-install.log
PIP_INSTALL = $(BIN)/pip install --quiet --disable-pip-version-check -e
QUIET_PIP = >$(PIP_LOG) 2>&1 || { cat $(PIP_LOG); exit 1; }

venv: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing evsync and its run-time dependencies into $(VENV)"
	@$(PIP_INSTALL) . $(QUIET_PIP)
	@touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing evsync with the dev extras (test and lint tools) into $(VENV)"
	@$(PIP_INSTALL) '.[dev]' $(QUIET_PIP)
	@touch $@ $(RUN_STAMP)

# Each instance its own /metrics, /healthz and /status port, so two run side by side.
HTTP_PORT_one := 8500
HTTP_PORT_two := 8501
EVSYNC_HTTP ?= 127.0.0.1:$(or $(HTTP_PORT_$(INSTANCE)),8502)

## run: start the quickstart instance (a local directory is the bucket)
run: $(RUN_STAMP)
	EVSYNC_INSTANCE=$(INSTANCE) EVSYNC_HTTP=$(EVSYNC_HTTP) $(BIN)/evsync -c config/quickstart.yaml sync

## test: set everything up and run the whole suite, lint and type checks included
test: $(DEV_STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

## test-localstack: the notification tests against LocalStack started on this host
test-localstack: $(DEV_STAMP) system-deps
	PORT=$(LOCALSTACK_PORT) ./localstack/run-host.sh --background
	EVSYNC_TEST_AWS_ENDPOINT=http://127.0.0.1:$(LOCALSTACK_PORT) \
		$(BIN)/pytest -q tests/integration/test_notifications.py; \
		rc=$$?; ./localstack/run-host.sh --stop; exit $$rc

## soak: the reliability suite's convergence checker for SOAK_SECONDS (default 600), with a summary
SOAK_SECONDS ?= 600
soak: $(DEV_STAMP) system-deps
	$(BIN)/python -m tests.reliability.soak --seconds $(SOAK_SECONDS)

## system-deps: Debian packages the tests need (mosquitto, pdns-server, pdns-backend-lmdb, dnsutils), with apt-get as root or through sudo
system-deps:
	./scripts/install-system-deps.sh

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/propagation.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
