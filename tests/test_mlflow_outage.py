"""A tracking server that dies while a run is using it: the step fails within seconds with a message naming
MLflow (bounded HTTP retries set by the MLflow resource for the step's process), and the MLflow run it left
RUNNING is closed by the next challenger. Real `mlflow server` processes, killed with SIGKILL."""

from __future__ import annotations

import logging
import os
import time

import dagster as dg
import pytest

from model_half import GOOD, mlflow_resource, publish_training_data, resources_of
from als_store import mlflow_store, model_tags
from pipelines.defs import model_assets
from pipelines.registry import run_log

STEP_FAILS_WITHIN_S = 30.0
KILL_AFTER = "iteration 1/"  # the challenger's log line after the first ALS sweep: its MLflow run is open


def challenger_job(resource, settings, kill_on: str | None = None, server=None):
    """The challenger as a job with one logger of ours: on the first log line containing ``kill_on`` it
    SIGKILLs ``server`` before the step goes on (a deterministic point inside the step)."""
    killed_at: list[float] = []

    @dg.logger
    def kill_server(init_context):
        class Kill(logging.Handler):
            def emit(self, record):
                if kill_on and not killed_at and kill_on in record.getMessage():
                    server.kill()
                    killed_at.append(time.monotonic())

        logger = logging.Logger("kill-mlflow-server", level=logging.DEBUG)
        logger.addHandler(Kill())
        return logger

    defs = dg.Definitions(
        assets=[model_assets.challenger],
        jobs=[dg.define_asset_job("challenger_only", selection=[model_assets.challenger])],
        resources=resources_of(resource, settings),
        loggers={"kill_server": kill_server},
    )
    return defs.resolve_job_def("challenger_only"), killed_at


def run_config() -> dict:
    return {"ops": {"challenger": {"config": GOOD}}, "loggers": {"kill_server": {}}}


@pytest.mark.slow
def test_a_server_killed_mid_run_fails_the_step_in_seconds_and_the_next_challenger_closes_its_run(
        settings, own_mlflow_server, monkeypatch):
    for key in mlflow_store.MLFLOW_HTTP_LIMITS:  # what the resource sets, not whatever another test left
        monkeypatch.delenv(key, raising=False)
    publish_training_data(settings)
    server = own_mlflow_server()
    resource = mlflow_resource(settings, tracking_uri=server.uri)

    with dg.instance_for_test() as instance:
        job, killed_at = challenger_job(resource, settings, KILL_AFTER, server)
        result = job.execute_in_process(run_config=run_config(), instance=instance, raise_on_error=False)
        finished = time.monotonic()
        assert killed_at, "the server was never killed: the challenger did not log its first iteration"
        assert not result.success
        print(f"the step failed {finished - killed_at[0]:.1f}s after the server was killed")
        assert finished - killed_at[0] < STEP_FAILS_WITHIN_S
        [failure] = result.get_step_failure_events()
        message = failure.step_failure_data.error.message
        assert "MLflow failed while" in message and "The champion alias was not changed" in message
        assert all(key not in os.environ for key in mlflow_store.MLFLOW_HTTP_LIMITS)  # only for the step

        # the same store behind a new server: the run the dead step could not close is still RUNNING
        server = own_mlflow_server()
        client = mlflow_store.make_client(server.uri)
        experiment = client.get_experiment_by_name(run_log.DEFAULT_EXPERIMENT)
        [left_open] = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
        assert left_open.data.tags[model_tags.TAG_DAGSTER_RUN_ID] == result.run_id
        assert instance.get_run_by_id(result.run_id).is_finished

        resource = mlflow_resource(settings, tracking_uri=server.uri)
        job, _ = challenger_job(resource, settings)
        again = job.execute_in_process(run_config=run_config(), instance=instance)
    closed = client.get_run(left_open.info.run_id)
    assert closed.info.status == "KILLED"
    assert closed.data.tags[model_tags.TAG_CLOSED_BY] == again.run_id
    assert client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") == []
