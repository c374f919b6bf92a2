# Everything a fresh machine needs is set up by these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
INSTANCE ?= one

.PHONY: run test test-localstack soak lint typecheck check bench clean venv system-deps
ifndef LOCALSTACK_PORT
LOCALSTACK_PORT := $(shell $(PYTHON) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
endif

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: start the quickstart instance (a local directory is the bucket)
run: $(STAMP)
	EVSYNC_INSTANCE=$(INSTANCE) $(BIN)/evsync -c config/quickstart.yaml sync

## test: set everything up and run the whole suite, lint and type checks included
test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

## test-localstack: the notification tests against LocalStack started on this host
test-localstack: $(STAMP) system-deps
	PORT=$(LOCALSTACK_PORT) ./localstack/run-host.sh --background
	EVSYNC_TEST_AWS_ENDPOINT=http://127.0.0.1:$(LOCALSTACK_PORT) \
		$(BIN)/pytest -q tests/integration/test_notifications.py; \
		rc=$$?; ./localstack/run-host.sh --stop; exit $$rc

## soak: the reliability suite's convergence checker for SOAK_SECONDS (default 600), with a summary
SOAK_SECONDS ?= 600
soak: $(STAMP) system-deps
	$(BIN)/python -m tests.reliability.soak --seconds $(SOAK_SECONDS)

## system-deps: Debian packages the tests need (mosquitto)
system-deps:
	./scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/propagation.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
