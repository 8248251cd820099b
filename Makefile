# Every target creates the virtual environment it needs when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Where the IDX datasets live (mnist/ and fashion-mnist/ inside); exported for the training CLI and tests.
DATA_DIR ?= $(AESERVE_DATA_DIR)
export AESERVE_DATA_DIR := $(DATA_DIR)
export TF_CPP_MIN_LOG_LEVEL ?= 2
# After SIGTERM (Ctrl-C) uvicorn stops accepting and lets requests in flight finish for up to this many seconds.
export UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN ?= 20
# The one place the version is written: pyproject.toml (the package reads it back with importlib.metadata).
VERSION = $(shell $(PYTHON) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
# The Open Inference Protocol's gRPC service (AESERVE_GRPC_PORT, 8081) listens where uvicorn does.
export AESERVE_GRPC_HOST ?= $(HOST)

RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
PROTO := app/protocols/oip/grpc_predict_v2.proto

.PHONY: help install serve image test lint format train evaluate report examples bench clean

help:
	@echo "make install   create $(VENV) and install the runtime dependencies (the container image runs this too)"
	@echo "make serve     serve the committed models on http://$(HOST):$(PORT)"
	@echo "make image     docker build the image aeserve:$(VERSION), labelled with that version"
	@echo "make test      lint and run the test suite (DATA_DIR=... or AESERVE_DATA_DIR for the datasets)"
	@echo "make train     train, evaluate and export every recipe into models/"
	@echo "make evaluate  re-evaluate the committed models against their floors"
	@echo "make report    regenerate models/REPORT.md and its figures"
	@echo "make examples  regenerate README's API examples from a running service"
	@echo "make bench     the serving benchmark: the service beside a bare FastAPI ceiling and a naive app"
	@echo "make lint      ruff"

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e ".[train,dev]"
	touch $@

# The one install path: `make serve`, the container image (Dockerfile) and tests/test_deploy.py all use it.
install: $(RUNTIME)

serve: install
	$(BIN)/python -m app.serve app.main:app --host $(HOST) --port $(PORT) $(if $(WORKERS),--workers $(WORKERS))

image:
	docker build --build-arg VERSION=$(VERSION) -t aeserve:$(VERSION) .

test: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(DEV)
	$(BIN)/ruff check .

format: $(DEV)
	$(BIN)/ruff check --fix .

train: $(DEV)
	$(BIN)/python -m training train --all

evaluate: $(DEV)
	$(BIN)/python -m training evaluate

report: $(DEV)
	$(BIN)/python -m training report

examples: $(DEV)
	$(BIN)/python scripts/api_examples.py

bench: $(RUNTIME)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python benchmarks/run.py

# The gRPC stubs in app/protocols/oip/, generated from the .proto beside them (tests check they match it).
.PHONY: grpc-stubs
grpc-stubs: $(DEV)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info dist
