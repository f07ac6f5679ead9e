"""The daily retrain as the schedule and the UI launch it: the job's own executor (multiprocess: one process per
step, pools enforced across them) on the project's persistent instance, through `dagster job execute`."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from crash_helpers import WAIT_S, dagster_cli, ingest, land, open_instance, step_workers
from als_store import mlflow_store, model_registry, model_tags

MODEL_STEPS = {"interactions", "training_data", "challenger", "evaluation", "champion", "recommendations"}


@pytest.mark.slow
def test_daily_retrain_under_the_multiprocess_executor_trains_gates_and_promotes(settings, tmp_path):
    land(settings)
    ingest(settings)
    log = tmp_path / "retrain.log"
    process = dagster_cli(settings, "job", "execute", "-m", "pipelines.definitions", "-j", "daily_retrain", log=log)
    assert process.wait(timeout=WAIT_S * 2) == 0, log.read_text()[-4000:]

    with open_instance(settings) as instance:
        [record] = instance.get_run_records(dg.RunsFilter(job_name="daily_retrain"))
        run = record.dagster_run
        assert run.status == dg.DagsterRunStatus.SUCCESS
        [start] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
        messages = [entry.dagster_event.message or "" for entry in
                    instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
        workers = step_workers(instance, run.run_id)
    assert any(m.startswith("Executing steps using multiprocess executor") for m in messages)
    assert MODEL_STEPS <= set(workers)  # every step in a process of its own, none in the orchestrator
    pids = [pid for pid, _ in workers.values()]
    assert len(set(pids)) == len(pids) and start.dagster_event.pid not in pids

    client = mlflow_store.make_client(settings.mlflow_tracking_uri)
    ref, bundle = model_registry.load_champion_bundle(settings.mlflow_tracking_uri, settings.model_name)
    assert ref.version == 1 and ref.tags[model_tags.TAG_DAGSTER_RUN_ID] == run.run_id
    tags = model_registry.get_version(client, settings.model_name, 1).tags
    assert tags["gate.decision"] == "promoted" and tags["gate.dagster_run_id"] == run.run_id
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        written = con.execute("SELECT model_version, count(DISTINCT user_id) FROM recommendations "
                              "GROUP BY ALL").fetchall()
    assert written == [(1, len(bundle.user_ids))]
