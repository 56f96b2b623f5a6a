# The README's two commands: `make demo` and `make test`. Both set up .venv from scratch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.test-installed

.PHONY: demo demo-full test test-all bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Pinned dependencies first (torch==2.13.0 is the CPU build), then latbench with every extra
# ([all]: torch, litert, fleet, plots); the lock already holds them, so nothing more is fetched.
$(INSTALLED): $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet -e '.[all]'
	touch $@

$(TEST_INSTALLED): $(INSTALLED) requirements-test.lock
	$(BIN)/pip install --quiet -r requirements-test.lock
	touch $@

demo: $(INSTALLED)
	$(BIN)/latbench demo --quick

demo-full: $(INSTALLED)
	$(BIN)/latbench demo

# System packages the tests need (OpenSSH server, adb) are installed when possible (root + apt).
test: $(TEST_INSTALLED)
	bash scripts/install-test-deps.sh
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(TEST_INSTALLED)
	bash scripts/install-test-deps.sh
	$(BIN)/python -m pytest -q

bench: $(TEST_INSTALLED)
	bash scripts/install-test-deps.sh
	$(BIN)/python benchmarks/run_all.py

lint: $(TEST_INSTALLED)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
