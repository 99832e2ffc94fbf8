# The two commands a newcomer needs are `make demo` and `make test`; everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export FRESHLINE_STATE_DIR ?= $(CURDIR)/.state

.PHONY: setup demo test lint typecheck unit integration heavy up down status chaos bench clean

setup: $(VENV)/.installed

# Re-run the setup whenever the dependency list changes.
$(VENV)/.installed: pyproject.toml cluster/setup.sh
	bash cluster/setup.sh $(PYTHON)
	touch $@

demo: setup
	$(BIN)/freshline demo

test: setup lint typecheck
	$(BIN)/pytest -m "not chaos_full and not heavy"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy features regions cluster actors serve_apps chaos benchmarks training

unit: setup
	$(BIN)/pytest tests/unit

integration: setup
	$(BIN)/pytest tests/integration -m "not heavy"

heavy: setup
	$(BIN)/pytest -m heavy

up: setup
	$(BIN)/freshline stack up

down: setup
	$(BIN)/freshline stack down

status: setup
	$(BIN)/freshline stack status

clean:
	-$(BIN)/freshline stack down --purge
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Every drill, full length, against the local stack (started if needed); reports in reports/chaos/.
chaos: setup
	$(BIN)/freshline chaos run all
