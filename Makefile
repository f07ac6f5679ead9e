# Every command a newcomer needs. `make run` and `make test` are the README's quick start.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SPARK_STAMP := $(VENV)/.installed-spark
SERVE_WORKERS ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: install install-spark run test test-fast bench ui mlflow-ui serve landing clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[dev,postgres]"
	touch $(STAMP)

# the Spark engine's extra (pyspark, ~0.5 GB; Java 17 from the system): the tests need it, `make run` does not
$(SPARK_STAMP): $(STAMP)
	$(PY) -m pip install -q -c requirements.lock -e ".[dev,postgres,spark]"
	touch $(SPARK_STAMP)

install: $(STAMP)

install-spark: $(SPARK_STAMP)

## run the main job end to end on embedded defaults and print what it did
run: $(STAMP)
	$(PY) -m pipelines.demo

## the whole test suite (slow end-to-end tests included)
test: $(SPARK_STAMP)
	$(PY) -m pytest -q

## the quick part of the suite
test-fast: $(SPARK_STAMP)
	$(PY) -m pytest -q -m "not slow"

## the Dagster UI on http://127.0.0.1:3000 with the project's instance (schedules and sensor running)
UI_PORT ?= 3000
ui: $(STAMP)
	eval "$$($(PY) -m pipelines.instance)" && exec $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(UI_PORT)

## the MLflow UI on http://127.0.0.1:5000 over the project's store
mlflow-ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri "$$($(PY) -c 'from als_store.settings import Settings; print(Settings.from_env().mlflow_tracking_uri)')" --host 127.0.0.1 --port 5000 --workers 1

## the recommendation API on http://127.0.0.1:8000 serving the champion
serve: $(STAMP)
	$(PY) -m serving --workers $(SERVE_WORKERS)

## write synthetic landing files (one per day) into the landing directory
landing: $(STAMP)
	$(PY) -m pipelines.landing

bench: $(SPARK_STAMP)
	$(PY) bench/als_fit.py
	$(PY) bench/quality_ml100k.py
	$(PY) bench/pipeline.py
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) .data test-artifacts
