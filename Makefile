# Two entry points: `make demo` and `make test`. Both create .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DB     ?= data/edrules.duckdb
SERVE  ?= 1

.PHONY: demo test venv install install-test clean bench lab

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[lab]'

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

demo: install
	$(BIN)/edrules demo --db $(DB) $(if $(filter 1,$(SERVE)),--serve,--no-serve)

# Open the analyst notebooks in JupyterLab (after `make demo` built data/edrules.duckdb).
lab: install
	$(BIN)/jupyter lab --ip=127.0.0.1 --no-browser notebooks/

test: install-test
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider

bench: install-test
	$(BIN)/python -m benchmarks.ingest

clean:
	rm -rf $(VENV) $(DB) $(DB).wal data/packs data/state
