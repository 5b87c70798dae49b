# Two entry points: `make demo` and `make test`. Both create .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DB     ?= data/edrules.duckdb
SERVE  ?= 1

.PHONY: demo test venv install install-test clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

demo: install
	$(BIN)/edrules demo --db $(DB) $(if $(filter 1,$(SERVE)),--serve,--no-serve)

test: install-test
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install-test
	$(BIN)/python -m benchmarks.ingest

clean:
	rm -rf $(VENV) $(DB) $(DB).wal data/packs
