# The front door: `make run` (main job on the shipped model) and `make test` (lint + the whole test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: setup run test lint bench proto clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

run: setup
	$(BIN)/curvedit traverse --out out/traverse.png
	$(BIN)/curvedit serve

lint: setup
	$(BIN)/ruff check .

test: lint
	TRITON_INTERPRET=1 $(BIN)/pytest -q

bench: setup
	$(BIN)/curvedit bench engine

proto: setup
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto --grpc_python_out=proto \
		proto/curvedit/v1/latent_edit.proto proto/curvedit/inference/grpc_service.proto

clean:
	rm -rf $(VENV) out build *.egg-info
