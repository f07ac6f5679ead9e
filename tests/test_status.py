"""`python -m pipelines status` against a real DuckDB warehouse, a real MLflow sqlite store and the project's
Dagster instance: a populated pipeline, nothing run yet, an unreachable tracking server, a warehouse locked by a
writing process, and what needs a person (a run stuck holding a pool slot, a champion that cannot be loaded, a
version evaluated but never gated), each with the command that fixes it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from als_store import mlflow_store, model_registry, model_tags
from pipelines import status
from pipelines.registry import promotion, registration, run_log
from pipelines.landing import write_day_files
from als_store.settings import PROJECT_ROOT, Settings

CLI_TIMEOUT_S = 120
# (challenger NDCG@10, popularity NDCG@10) per retrain, in order: v1 beats popularity, v2 loses to v1, v3 wins
RETRAINS = [(0.30, 0.10), (0.25, 0.10), (0.35, 0.12)]
USER_IDS, ITEM_IDS = np.arange(100, 112), np.arange(500, 509)  # of the tiny registered model
KNOWN_USERS = USER_IDS[:2]  # the registry smoke-tests a version on these before registering it
DAYS = {"2026-01-05": (40, 3), "2026-01-06": (50, 0)}  # day: (good rows, bad rows)


def run_status(settings: Settings, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, with the test's pipeline home."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ALS_", "MLFLOW_", "DAGSTER_"))}
    environment.update({"ALS_PIPELINE_HOME": str(settings.home), **(env or {})})
    return subprocess.run([sys.executable, "-m", "pipelines", "status", *args], cwd=PROJECT_ROOT, env=environment,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def status_json(settings: Settings, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = run_status(settings, "--json", *args, env=env)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


# ------------------------------------------------------------------------------------------ fixtures


def land_days(settings: Settings) -> None:
    """Landing files with `good` valid events and `bad` rows (unknown event type) per day."""
    frames = []
    for day, (good, bad) in DAYS.items():
        ts = pd.Timestamp(day) + pd.to_timedelta(np.arange(good + bad), unit="min")
        kinds = ["view"] * good + ["wishlist"] * bad
        frames.append(pd.DataFrame({"user_id": np.arange(good + bad) % 7, "item_id": np.arange(good + bad) % 11,
                                    "event_type": kinds, "ts": ts}))
    write_day_files(pd.concat(frames, ignore_index=True), settings.landing_dir, fmt="csv")


def tiny_bundle_dir(root: Path) -> Path:
    from als_core import ALS
    from als_core.bundle import ModelBundle

    rng = np.random.default_rng(0)
    train = sp.random(len(USER_IDS), len(ITEM_IDS), density=0.4, format="csr", dtype=np.float32, random_state=rng) * 10
    model = ALS(factors=4, iterations=2, random_state=0)
    model.fit(train)
    bundle = ModelBundle.build(model, USER_IDS, ITEM_IDS, train, {"test": True})
    return bundle.save(root / "bundle")


def register_retrains(settings: Settings, tmp: Path) -> None:
    """Three training runs through the registry's own functions, each gated like the pipeline does."""
    uri, name = settings.mlflow_tracking_uri, settings.model_name
    client = mlflow_store.make_client(uri)
    experiment = run_log.ensure_experiment(client, run_log.DEFAULT_EXPERIMENT, settings.mlflow_artifact_root)
    bundle_dir = tiny_bundle_dir(tmp)
    lock = promotion.lock_path_for(uri, settings.home)
    scores: dict[int, float] = {}
    for i, (ndcg, popularity) in enumerate(RETRAINS):
        run_id = run_log.start_training_run(client, experiment, f"retrain-{i}",
                                            {status.TAG_TRAINING_WINDOW: "2026-01-05..2026-01-06"})
        run_log.log_training(client, run_id, {"factors": 4}, [3.0, 2.0, 1.5], 0.1,
                             {"events": 1000 * (i + 1), "users": 12, "items": 9})
        run_log.finish_run(client, run_id)
        ref = registration.register_bundle(uri, run_id, name, bundle_dir, KNOWN_USERS,
                                           {model_tags.TAG_DAGSTER_RUN_ID: f"dagster-{i}"})
        champion = model_registry.aliases(client, name).get(model_tags.CHAMPION)
        promotion.promote_if_better(client, name, ref.version, ndcg, popularity, (champion, scores.get(champion)),
                                    score_champion=scores.__getitem__, lock_path=lock)
        scores[ref.version] = ndcg


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> Settings:
    """A pipeline home with two ingested days and three gated retrains (built once for the module)."""
    import dagster as dg

    from pipelines.defs import checks
    from pipelines.defs.ingest import build_events_asset
    from pipelines.defs.partitions import daily_partitions
    from pipelines.defs.resources import PipelineSettings, build_resources

    root = tmp_path_factory.mktemp("status")
    settings = Settings.from_env({"ALS_PIPELINE_HOME": str(root / "home")})
    land_days(settings)
    events = build_events_asset(daily_partitions("2026-01-01"))
    for day in DAYS:
        dg.materialize([events, checks.events_present_and_valid], partition_key=day,
                       resources=build_resources(PipelineSettings.of(settings)))
    register_retrains(settings, root)
    return settings


# ------------------------------------------------------------------------------------------ tests


def test_nothing_run_yet_says_so_and_creates_nothing(settings):
    result = run_status(settings)
    assert result.returncode == 0, result.stderr
    assert "nothing trained" in result.stdout and "nothing ingested" in result.stdout
    assert "Champion: none" in result.stdout
    assert not settings.duckdb_path.exists() and not (settings.home / "mlflow.db").exists()


def test_populated_pipeline_shows_champion_retrains_and_ingests(populated):
    code, report = status_json(populated)
    assert code == 0
    reg, wh = report["registry"], report["warehouse"]
    assert reg["state"] == "ok" and wh["state"] == "ok"

    versions = reg["versions"]
    assert [v["version"] for v in versions] == [3, 2, 1]  # newest first
    by_version = {v["version"]: v for v in versions}
    for version, (ndcg, popularity) in enumerate(RETRAINS, start=1):
        assert by_version[version]["ndcg_at_10"] == pytest.approx(ndcg)
        assert by_version[version]["popularity_ndcg_at_10"] == pytest.approx(popularity)
        assert by_version[version]["dagster_run_id"] == f"dagster-{version - 1}"
    assert [by_version[v]["decision"] for v in (1, 2, 3)] == ["promoted", "rejected", "promoted"]
    assert by_version[2]["champion_version"] == 1 and by_version[2]["champion_ndcg_at_10"] == pytest.approx(0.30)
    assert by_version[3]["aliases"] == ["champion"] and by_version[1]["aliases"] == ["previous_champion"]

    champion = reg["champion"]
    assert champion["version"] == 3 and champion["ndcg_at_10"] == pytest.approx(RETRAINS[2][0])
    assert (champion["events"], champion["events_source"]) == (3000, "run")
    assert champion["data"] == {"users": 12, "items": 9} and champion["window"] == "2026-01-05..2026-01-06"
    assert champion["trained_at"].endswith("UTC")

    recent = {d["day"]: d for d in wh["recent"]}
    assert list(recent) == sorted(DAYS, reverse=True)
    for day, (good, bad) in DAYS.items():
        assert (recent[day]["events"], recent[day]["rejected"], recent[day]["files"]) == (good, bad, 1)
    assert recent["2026-01-05"]["rejected_reasons"] == f"unknown event type: {DAYS['2026-01-05'][1]}"
    assert wh["events"] == sum(g for g, _ in DAYS.values()) and wh["rejected"] == sum(b for _, b in DAYS.values())


def test_populated_text_report_is_readable(populated):
    result = run_status(populated)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "Dagster instance profile: embedded (sqlite storage under DAGSTER_HOME" in text.splitlines()[2]
    assert f"Champion: {populated.model_name} v3   NDCG@10 0.3500" in text
    assert "  data      window 2026-01-05..2026-01-06, 3,000 events, 12 users, 9 items" in text
    lines = text.splitlines()
    retrains = lines.index("Last retrains (newest first):")
    rows = lines[retrains + 2:retrains + 5]
    assert [row.split()[0] for row in rows] == ["v3", "v2", "v1"]
    assert "rejected" in rows[1] and "v1 0.3000" in rows[1]
    day_rows = [line for line in lines if line.strip().startswith("2026-01-0")]
    assert [row.split()[0] for row in day_rows] == ["2026-01-06", "2026-01-05"]
    assert "unknown event type: 3" in day_rows[1]


def test_champion_without_logged_events_counts_its_window_in_the_warehouse(populated):
    warehouse = status.read_warehouse(populated)
    champion = status.ChampionSummary(version=1, ndcg_at_10=0.3, popularity_ndcg_at_10=0.1, trained_at=None,
                                      data={}, window="2026-01-06..2026-01-30", run_id=None)
    reg = status.RegistryStatus("sqlite:////x", "m", "ok", champion=champion)
    report = status.Status(str(populated.home), reg, warehouse)
    assert (champion.events, champion.events_source) == (DAYS["2026-01-06"][0], "warehouse")
    assert f"{DAYS['2026-01-06'][0]} events (counted in the warehouse now)" in status.render(report)


def test_unreachable_mlflow_is_reported_and_ingest_still_shown(populated):
    from ui_helpers import free_port

    start = time.monotonic()
    result = run_status(populated, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})
    assert time.monotonic() - start < 60
    assert result.returncode == 1
    assert "MLflow unavailable" in result.stdout and "unreachable" in result.stdout
    assert "2026-01-06" in result.stdout  # the warehouse part is still there


def test_locked_warehouse_is_reported_and_champion_still_shown(populated):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
         str(populated.duckdb_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_status(populated, "--lock-wait", "0.5")
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert result.returncode == 1
    assert "locked by another process" in result.stdout
    assert "Champion: " in result.stdout and " v3 " in result.stdout


def test_versions_without_champion_say_none_passed_the_gate(tmp_path):
    settings = Settings.from_env({"ALS_PIPELINE_HOME": str(tmp_path / "home")})
    uri, name = settings.mlflow_tracking_uri, settings.model_name
    client = mlflow_store.make_client(uri)
    experiment = run_log.ensure_experiment(client, run_log.DEFAULT_EXPERIMENT, settings.mlflow_artifact_root)
    run_id = run_log.start_training_run(client, experiment, "loses", {})
    ref = registration.register_bundle(uri, run_id, name, tiny_bundle_dir(tmp_path), KNOWN_USERS, {})
    promotion.promote_if_better(client, name, ref.version, 0.05, 0.10, (None, None), score_champion=None,
                                lock_path=promotion.lock_path_for(uri, settings.home))
    reg = status.read_registry(settings)
    assert reg.state == "ok" and reg.champion is None
    assert [v.decision for v in reg.versions] == ["rejected"]
    assert "no version has passed the gate" in status.render(
        status.Status(str(settings.home), reg, status.read_warehouse(settings)))


def test_warehouse_without_tables_is_empty_not_an_error(tmp_path):
    import duckdb

    settings = Settings.from_env({"ALS_PIPELINE_HOME": str(tmp_path / "home")})
    settings.home.mkdir(parents=True)
    duckdb.connect(str(settings.duckdb_path)).close()
    wh = status.read_warehouse(settings)
    assert wh.state == "empty" and "no ingest tables" in wh.message


def test_pipelines_command_lists_its_commands(capsys):
    from pipelines.__main__ import main

    assert main([]) == 2
    assert "status" in capsys.readouterr().err
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "status" in out and "registry" in out
    assert main(["no-such-command"]) == 2


# ------------------------------------------------------------------------------------------ what needs a person


def problems_of(report: dict) -> dict[str, dict]:
    return {problem["kind"]: problem for problem in report["problems"]}


def run_command(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ALS_", "MLFLOW_", "DAGSTER_"))}
    environment["ALS_PIPELINE_HOME"] = str(settings.home)
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=environment, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S)


def test_a_run_stuck_holding_a_pool_slot_is_shown_with_the_command_that_frees_it(settings):
    from crash_helpers import kill_run_holding

    run_id = kill_run_holding(settings, "duckdb")
    code, report = status_json(settings)
    assert code == 1
    [run] = report["runs"]["runs"]
    assert (run["run_id"], run["status"], run["pools"]) == (run_id, "STARTED", ["duckdb (hold_slot)"])
    assert "is gone" in run["problem"]
    stuck = problems_of(report)["stuck_run"]
    assert run_id[:8] in stuck["message"] and stuck["fix"] == ".venv/bin/python -m pipelines recover"
    text = run_status(settings).stdout
    assert "STUCK" in text and "fix: .venv/bin/python -m pipelines recover" in text

    assert run_command(settings, "-m", "pipelines", "recover").returncode == 0
    code, report = status_json(settings)
    assert code == 0 and report["problems"] == [] and report["runs"]["runs"] == []
    assert "Nothing needs a person." in run_status(settings).stdout


@pytest.fixture
def retrained(tmp_path, monkeypatch) -> Settings:
    """Three gated retrains (v3 champion, v1 previous_champion) in a home of its own."""
    for key in [k for k in os.environ if k.startswith(("ALS_", "MLFLOW_", "DAGSTER_"))]:
        monkeypatch.delenv(key)
    settings = Settings.from_env({"ALS_PIPELINE_HOME": str(tmp_path / "home")})
    register_retrains(settings, tmp_path)
    return settings


def move_model_away(settings: Settings, version: int, tmp: Path) -> Path:
    model_dir = model_registry.local_model_dir(settings.mlflow_tracking_uri, settings.model_name, version)
    return Path(shutil.move(model_dir, tmp / f"moved-v{version}"))


def test_a_champion_that_cannot_be_loaded_is_shown_with_the_rollback_that_fixes_it(retrained, tmp_path):
    moved = move_model_away(retrained, 3, tmp_path)
    code, report = status_json(retrained)
    assert code == 1
    champion = report["registry"]["champion"]
    assert champion["version"] == 3 and "is missing" in champion["load_error"]
    problem = problems_of(report)["champion_unloadable"]
    assert "champion v3 cannot be loaded" in problem["message"] and "previous_champion v1 loads" in problem["message"]
    assert problem["fix"] == ".venv/bin/python -m pipelines registry rollback"
    assert "does not load: its model directory" in run_status(retrained).stdout

    assert run_command(retrained, "-m", "pipelines", "registry", "rollback").returncode == 0
    code, report = status_json(retrained)
    assert code == 0 and report["registry"]["champion"]["version"] == 1
    assert report["registry"]["champion"]["load_error"] is None and report["problems"] == []
    shutil.move(moved, tmp_path / "unused")


def test_a_champion_without_a_loadable_previous_one_needs_a_promotion_by_hand(retrained, tmp_path):
    move_model_away(retrained, 3, tmp_path)
    move_model_away(retrained, 1, tmp_path)
    code, report = status_json(retrained)
    assert code == 1
    assert problems_of(report)["champion_unloadable"]["fix"] == ".venv/bin/python -m pipelines registry promote VERSION"


def test_a_version_evaluated_but_never_gated_is_shown_with_the_command_that_gates_it(retrained, tmp_path):
    uri, name = retrained.mlflow_tracking_uri, retrained.model_name
    client = mlflow_store.make_client(uri)
    experiment = run_log.ensure_experiment(client, run_log.DEFAULT_EXPERIMENT, retrained.mlflow_artifact_root)
    run_id = run_log.start_training_run(client, experiment, "evaluated", {})
    ref = registration.register_bundle(uri, run_id, name, tiny_bundle_dir(tmp_path / "v4"), KNOWN_USERS, {})
    registration.set_version_tags(client, ref, {model_tags.TAG_EVAL_CHALLENGER_NDCG: "0.3",
                                                model_tags.TAG_EVAL_DAGSTER_RUN_ID: "a-dead-run"})

    code, report = status_json(retrained)
    assert code == 1
    problem = problems_of(report)["not_gated"]
    assert problem["message"].startswith(f"v{ref.version} was evaluated but never gated")
    assert problem["fix"] == status.gate_command(ref.version)
    assert "--select champion" in problem["fix"] and f'"version": {ref.version}' in problem["fix"]

    # a newer version gated since: the old one is superseded, not waiting for a person
    newer = registration.register_bundle(uri, run_id, name, tiny_bundle_dir(tmp_path / "v5"), KNOWN_USERS, {})
    promotion.promote_if_better(client, name, newer.version, 0.01, 0.10, (3, 0.35), score_champion=None,
                                lock_path=promotion.lock_path_for(uri, retrained.home))
    code, report = status_json(retrained)
    assert code == 0 and report["problems"] == []
