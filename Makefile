# Every command a newcomer needs. `make run` and `make test` are the README's quick start.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast bench serve ui clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## run the main job end to end on embedded defaults and print what it did
run: $(STAMP)
	$(PY) -m als_core.demo

## the whole test suite (slow end-to-end tests included)
test: $(STAMP)
	$(PY) -m pytest -q

## the quick part of the suite
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/als_fit.py
	$(PY) bench/quality_ml100k.py

clean:
	rm -rf $(VENV) .data
