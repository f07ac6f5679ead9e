"""The production profile for real: Dagster's runs, events and pools in a Postgres database, MLflow a tracking
server whose backend store is another database of the same cluster (tests/postgres_server.py). The daily retrain,
two retrains racing from two separate `dagster job execute` processes, and a rollback by the registry command, as
a deployment runs them: each run under its job's multiprocess executor, which claims the pools' slots in the
shared database (`dg.materialize` and `execute_in_process` do not)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from sqlalchemy.engine import make_url

from crash_helpers import QUIET, ROOT, WAIT_S, dagster_cli, env, ingest, land, open_instance, step_workers
from als_store import mlflow_store, model_registry, model_tags

MODEL_STEPS = {"interactions", "training_data", "challenger", "evaluation", "champion", "recommendations"}
POOLS = ("duckdb", "promotion")
# On crash_helpers' landed data (popularity NDCG@10 0.179): a champion to start from that beats popularity (0.198),
# and racing each other the defaults (0.221) and a stronger regularisation with fewer factors (0.282).
FIRST_CHAMPION = {"regularization": 300.0}
STRONGER = {"factors": 16, "regularization": 100.0}
CLEAR_GAP = 0.01  # the racers' NDCG@10 differ by more than this: the race has one right outcome
COLD = {"warm_start": "none"}


def retrain(settings, log: Path, challenger: dict | None = None) -> subprocess.Popen:
    """`dagster job execute -j daily_retrain` in a process of its own, the challenger's config (if any) in a
    run config file, as an operator passes it."""
    config = []
    if challenger is not None:
        run_yaml = log.with_suffix(".run.yaml")
        run_yaml.write_text(yaml.safe_dump({**QUIET, "ops": {"challenger": {"config": challenger}}}))
        config = ["-c", str(run_yaml)]
    return dagster_cli(settings, "job", "execute", "-m", "pipelines.definitions", "-j", "daily_retrain", *config,
                       log=log)


def finish(process: subprocess.Popen, log: Path) -> None:
    assert process.wait(timeout=WAIT_S * 3) == 0, log.read_text()[-4000:]


def step_spans(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """step key -> (STEP_START, STEP_SUCCESS) times of the run's steps that succeeded."""
    starts = {entry.dagster_event.step_key: entry.timestamp
              for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)}
    return {entry.dagster_event.step_key: (starts[entry.dagster_event.step_key], entry.timestamp)
            for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)}


def pool_waits(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, str, float]]:
    """(step key, pool, time) of each time a step of the run was first found blocked by a pool's limit."""
    prefix = "Step blocked by limit for pool "
    return [(entry.dagster_event.step_key, entry.dagster_event.message[len(prefix):], entry.timestamp)
            for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if (entry.dagster_event.message or "").startswith(prefix)]


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def steps_in_pool(job: dg.JobDefinition, pool: str) -> set[str]:
    """The job's steps that claim a slot of ``pool`` (their op's pool in the definitions)."""
    return {name for name, node in job.graph.node_dict.items() if node.definition.pool == pool}


def mlflow_database(profile) -> str:
    """The cluster's database that backs the profile's tracking server (its --backend-store-uri)."""
    args = list(profile.mlflow.process.args)
    return make_url(args[args.index("--backend-store-uri") + 1]).database


def rows_of(profile, table: str, columns: str) -> list[tuple]:
    """``columns`` of the rows of the profile's model in ``table`` of the tracking server's database, read in
    Postgres itself (every test's model shares that database)."""
    rows = profile.cluster.sql(f"SELECT name, {columns} FROM {table}", mlflow_database(profile))
    return [row[1:] for row in rows if row[0] == profile.settings.model_name]


def retrain_records(instance: dg.DagsterInstance) -> list[dg.RunRecord]:
    return instance.get_run_records(dg.RunsFilter(job_name="daily_retrain"))


def registry_command(profile, *args: str) -> subprocess.CompletedProcess:
    """`python -m pipelines registry ...` with the production environment, as an operator's shell has it."""
    return subprocess.run([sys.executable, "-m", "pipelines", "registry", *args], cwd=ROOT,
                          env=env(profile.settings), capture_output=True, text=True, timeout=120)


def assert_pools_have_one_slot_and_are_free(instance: dg.DagsterInstance) -> None:
    for pool in POOLS:
        info = instance.event_log_storage.get_concurrency_info(pool)
        assert (info.slot_count, info.limit) == (1, 1), pool
        assert not info.claimed_slots and not info.pending_steps, pool


@pytest.mark.slow
def test_daily_retrain_on_postgres_dagster_and_mlflow(production_profile, tmp_path):
    settings, cluster = production_profile.settings, production_profile.cluster
    land(settings)
    ingest(settings)
    log = tmp_path / "retrain.log"
    finish(retrain(settings, log), log)

    with open_instance(settings) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        [record] = retrain_records(instance)
        run = record.dagster_run
        assert run.status == dg.DagsterRunStatus.SUCCESS
        [start] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
        workers = step_workers(instance, run.run_id)
        assert_pools_have_one_slot_and_are_free(instance)
    assert cluster.sql("SELECT run_id, status FROM runs WHERE pipeline_name = 'daily_retrain'",
                       production_profile.dagster_database) == [(run.run_id, "SUCCESS")]
    assert MODEL_STEPS <= set(workers)  # every step in a process of its own, none in the orchestrator
    pids = [pid for pid, _ in workers.values()]
    assert len(set(pids)) == len(pids) and start.dagster_event.pid not in pids

    name = settings.model_name
    assert rows_of(production_profile, "model_versions", "version") == [(1,)]
    assert rows_of(production_profile, "registered_model_aliases", "alias, version") == [("champion", 1)]
    client = mlflow_store.make_client(settings.mlflow_tracking_uri)
    tags = model_registry.get_version(client, name, 1).tags
    assert tags[model_tags.TAG_GATE_DECISION] == "promoted" and tags[model_tags.TAG_GATE_DAGSTER_RUN_ID] == run.run_id
    ref, bundle = model_registry.load_champion_bundle(settings.mlflow_tracking_uri, name)
    assert ref.version == 1 and ref.tags[model_tags.TAG_DAGSTER_RUN_ID] == run.run_id
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        written = con.execute("SELECT model_version, count(DISTINCT user_id) FROM recommendations "
                              "GROUP BY ALL").fetchall()
    assert written == [(1, len(bundle.user_ids))]


@pytest.mark.slow
def test_two_retrains_racing_from_two_processes_promote_one_at_a_time_and_the_better_wins(production_profile,
                                                                                         tmp_path):
    """A champion to start from (so that a previous_champion exists whichever racer promotes first), then two
    `dagster job execute` processes started together on the shared instance, the second with a stronger
    challenger config. The expected outcome is computed from the NDCG@10 the gate recorded, never from the
    launch order: the pools decide which run goes first. Then `registry rollback` twice."""
    settings = production_profile.settings
    land(settings)
    ingest(settings)
    from pipelines.definitions import defs_at
    from pipelines.defs.resources import PipelineSettings

    job = defs_at(PipelineSettings.of(settings)).resolve_job_def("daily_retrain")
    with open_instance(settings) as instance:  # in process: nothing runs beside it yet
        first = job.execute_in_process(instance=instance, run_config={
            **QUIET, "ops": {"challenger": {"config": FIRST_CHAMPION}}})
    assert first.success
    client = mlflow_store.make_client(settings.mlflow_tracking_uri)
    name = settings.model_name
    assert model_registry.aliases(client, name) == {model_tags.CHAMPION: 1}

    logs = [tmp_path / "defaults.log", tmp_path / "stronger.log"]
    launched = time.time()
    # cold fits: their NDCG@10 depends on their config alone, not on the champion a warm start would begin from
    racers = [retrain(settings, logs[0], COLD), retrain(settings, logs[1], {**STRONGER, **COLD})]
    for process, log in zip(racers, logs):
        finish(process, log)
    done = time.time()

    with open_instance(settings) as instance:
        records = [r for r in retrain_records(instance) if r.dagster_run.run_id != first.run_id]
        assert len(records) == 2
        assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
        run_ids = [r.dagster_run.run_id for r in records]
        spans = {run_id: step_spans(instance, run_id) for run_id in run_ids}
        blocked = {run_id: pool_waits(instance, run_id) for run_id in run_ids}
        orchestrators = {entry.dagster_event.pid for run_id in run_ids
                         for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)}
        assert_pools_have_one_slot_and_are_free(instance)

    assert len(orchestrators) == 2  # two Dagster processes, sharing only the Postgres instance
    # one at a time: the champion steps, and every step holding the DuckDB pool, of one run never overlap the
    # other's
    a, b = run_ids
    assert not overlap(spans[a]["champion"], spans[b]["champion"]), spans
    duckdb_steps = steps_in_pool(job, "duckdb")
    assert {"interactions", "training_data", "evaluation", "recommendations"} <= duckdb_steps
    for step_a, step_b in itertools.product(duckdb_steps, repeat=2):
        assert not overlap(spans[a][step_a], spans[b][step_b]), (step_a, step_b, spans)

    # the gate replayed in the order the champion steps ran, on the NDCG@10 it recorded: a racer is promoted
    # when it beats the champion of that moment. The better racer ends as champion whichever order it was.
    version_of = {run_id: model_registry.find_version(client, name, run_id).version for run_id in run_ids}
    assert sorted(version_of.values()) == [2, 3]  # no popularity version: both racers beat popularity
    tags = {version: model_registry.get_version(client, name, version).tags for version in (1, 2, 3)}
    assert len({t[model_tags.TAG_HOLDOUT_FINGERPRINT] for t in tags.values()}) == 1  # judged on one holdout
    ndcg = {version: float(t[model_tags.TAG_GATE_CHALLENGER_NDCG]) for version, t in tags.items()}
    racers_ndcg = {run_id: ndcg[version_of[run_id]] for run_id in run_ids}
    report_race(records, spans, blocked, racers_ndcg, launched, done)
    assert abs(ndcg[2] - ndcg[3]) > CLEAR_GAP, ndcg
    better = max(run_ids, key=racers_ndcg.get)
    champion, previous = 1, None
    for run_id in sorted(run_ids, key=lambda run_id: spans[run_id]["champion"][0]):
        version = version_of[run_id]
        gate = tags[version]
        assert gate[model_tags.TAG_GATE_CHAMPION_VERSION] == str(champion), (version, gate)
        assert float(gate[model_tags.TAG_GATE_CHAMPION_NDCG]) == pytest.approx(ndcg[champion], abs=1e-9)
        promoted = ndcg[version] > ndcg[champion]
        assert gate[model_tags.TAG_GATE_DECISION] == ("promoted" if promoted else "rejected"), (version, gate)
        if promoted:
            champion, previous = version, champion
    assert champion == version_of[better] and previous is not None
    assert model_registry.aliases(client, name) == {model_tags.CHAMPION: champion,
                                                    model_tags.PREVIOUS_CHAMPION: previous}
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT DISTINCT model_version FROM recommendations").fetchall() == [(champion,)]

    # rollback on the Postgres-backed server: the two aliases swap, and a second rollback swaps them back
    rolled = registry_command(production_profile, "rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert f"{name}: champion v{champion} -> v{previous}" in rolled.stdout
    assert model_registry.aliases(client, name) == {model_tags.CHAMPION: previous,
                                                    model_tags.PREVIOUS_CHAMPION: champion}
    assert sorted(rows_of(production_profile, "registered_model_aliases", "alias, version")) == [
        ("champion", previous), ("previous_champion", champion)]
    again = registry_command(production_profile, "rollback")
    assert again.returncode == 0, again.stderr
    assert model_registry.aliases(client, name) == {model_tags.CHAMPION: champion,
                                                    model_tags.PREVIOUS_CHAMPION: previous}


def report_race(records, spans, blocked, ndcg, launched: float, done: float) -> None:
    """The race's timings on stdout (pytest -s shows them), in seconds after the launch: each run's champion
    step, when a step was blocked by a pool's limit (the other run held the slot), and every step."""
    for record in sorted(records, key=lambda r: spans[r.dagster_run.run_id]["champion"][0]):
        run_id = record.dagster_run.run_id
        config = record.dagster_run.run_config.get("ops", {}).get("challenger", {}).get("config", "defaults")
        start, end = spans[run_id]["champion"]
        steps = ", ".join(f"{step} {s - launched:.1f}..{e - launched:.1f}"
                          for step, (s, e) in sorted(spans[run_id].items(), key=lambda item: item[1]))
        waits = ", ".join(f"{step} blocked by pool {pool} at {t - launched:.1f}"
                          for step, pool, t in blocked[run_id]) or "no step blocked by a pool"
        print(f"run {run_id[:8]} ({config}, NDCG@10 {ndcg[run_id]:.4f}): champion {start - launched:.2f}.."
              f"{end - launched:.2f}; {waits}; steps {steps}")
    print(f"both runs done {done - launched:.1f}s after the launch")
