# The front door: `make run` (main job on the shipped model) and `make test` (lint, docs, the whole test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

LOCK := requirements/lock.txt

.PHONY: setup run test lint docs bench proto lock check-install clean

# Every install takes its versions from the lock (pip constraints; `make lock` refreshes it).
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $@

run: setup
	$(BIN)/curvedit traverse --out out/traverse.png
	$(BIN)/curvedit serve

lint: setup
	$(BIN)/ruff check .

# The documentation site (mkdocs.yml, docs/) into build/site; --strict fails on a broken link or a page left out.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

# The whole suite, then the service suites again against `serve --workers 2` (front-end processes before an
# engine process: tests/conftest.py's --serve-workers).
SERVICE_SUITES := tests/test_service_*.py tests/test_studio.py tests/test_studio_browser.py tests/test_deploy.py \
	tests/test_auto_engine.py tests/test_client_balancing.py tests/test_kubernetes.py

test: lint docs
	TRITON_INTERPRET=1 $(BIN)/pytest -q
	TRITON_INTERPRET=1 $(BIN)/pytest -q --serve-workers 2 $(SERVICE_SUITES)

# The wheel installed without extras into a fresh venv, used as a new user would (.ci/check_base_install.py).
check-install: setup
	$(PY) .ci/check_base_install.py

bench: setup
	$(BIN)/curvedit bench engine

proto: setup
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto --grpc_python_out=proto \
		proto/curvedit/v1/latent_edit.proto proto/curvedit/inference/grpc_service.proto

lock:
	bash requirements/refresh.sh

clean:
	rm -rf $(VENV) out build *.egg-info
