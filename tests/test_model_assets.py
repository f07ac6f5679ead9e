"""The model half (challenger -> evaluation -> champion -> recommendations) through `dg.materialize` on a real
MLflow sqlite store and a real DuckDB file, with training data written directly (no ingest)."""

from __future__ import annotations

import dagster as dg
import duckdb
import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import als_core
from als_core.hyperparameters import DEFAULTS
from model_half import ALL_ASSETS, BETTER, GATE_ASSETS, GOOD, WEAK, materialize, metadata_of, mlflow_resource, \
    publish_training_data, resources_of
from mlflow_server import closed_port_uri
from als_store import mlflow_store, model_registry, model_tags
from pipelines import recommendations_table
from pipelines.defs import model_assets
from pipelines.registry import run_log
from als_store.settings import Settings


def read_table(settings, sql: str, params=None) -> list[tuple]:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        return con.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One full materialisation of the model half (GOOD hyperparameters) in a home shared by the read-only
    tests of this module; returns (settings, training data, MLflow resource, Dagster result)."""
    with pytest.MonkeyPatch.context() as env:
        for name in ("MLFLOW_TRACKING_URI", "ALS_MODEL_NAME"):
            env.delenv(name, raising=False)
        settings = Settings.build(tmp_path_factory.mktemp("trained") / "home")
        data = publish_training_data(settings)
        resource = mlflow_resource(settings)
        result = materialize(ALL_ASSETS, resource, settings, challenger=GOOD, recommendations={"n": 20})
        yield settings, data, resource, result


def test_challenger_run_logs_params_loss_history_and_registers_a_version(trained):
    settings, data, resource, result = trained
    client = mlflow_store.make_client(resource.tracking_uri)
    meta = metadata_of(result, "challenger")
    ref = model_registry.get_version(client, resource.model_name, meta["model_version"])
    run = client.get_run(ref.run_id)

    assert run.info.status == "FINISHED"
    assert run.data.tags[model_tags.TAG_DAGSTER_RUN_ID] == result.run_id == ref.tags[model_tags.TAG_DAGSTER_RUN_ID]
    assert ref.tags[model_tags.TAG_HOLDOUT_FINGERPRINT] == data.holdout_fingerprint
    assert run.data.params["factors"] == str(GOOD["factors"]) and run.data.params["hyperparameters_from"] == "config"
    loss = client.get_metric_history(ref.run_id, "train_loss")
    # iterations counted from 1, as in the loss picture and the step's log lines
    assert [m.step for m in sorted(loss, key=lambda m: m.step)] == list(range(1, GOOD["iterations"] + 1))
    assert run.data.metrics["data_users"] == data.train.shape[0] and run.data.metrics["data_nnz"] == data.train.nnz
    assert run.data.metrics["fit_seconds"] > 0
    # the experiment's artifacts live under the pipeline home, not in ./mlruns of the test's cwd
    assert run.info.artifact_uri.startswith(settings.mlflow_artifact_root.as_uri())
    holdout_users, holdout_items = run_log.load_holdout(client, ref.run_id)
    assert np.array_equal(holdout_users, data.holdout_user_ids) and np.array_equal(holdout_items, data.holdout_item_ids)
    bundle = model_registry.load_bundle(resource.tracking_uri, resource.model_name, ref.version)
    assert np.array_equal(bundle.user_ids, data.user_ids) and np.array_equal(bundle.item_ids, data.item_ids)


def test_evaluation_and_first_promotion(trained):
    _, data, resource, result = trained
    client = mlflow_store.make_client(resource.tracking_uri)
    evaluation = metadata_of(result, "evaluation")
    version = metadata_of(result, "challenger")["model_version"]
    run = client.get_run(model_registry.get_version(client, resource.model_name, version).run_id)
    for role in ("challenger", "popularity"):
        for metric in ("ndcg", "hit_rate", "precision", "recall", "map", "coverage"):
            assert f"eval_{role}_{metric}_at_10" in run.data.metrics
    assert run.data.metrics["eval_challenger_ndcg_at_10"] == pytest.approx(evaluation["challenger_ndcg_at_10"])
    assert evaluation["champion_version"] == "none"  # nothing to compare with on the first run
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "challenger_beats_popularity"]
    assert check.passed == (evaluation["challenger_ndcg_at_10"] > evaluation["popularity_ndcg_at_10"])
    assert check.passed  # GOOD beats popularity on this data (else the next asserts test nothing)

    champion = metadata_of(result, "champion")
    assert champion["decision"] == "promoted" and champion["champion_version"] == version
    assert model_registry.aliases(client, resource.model_name) == {"champion": version}
    tags = model_registry.get_version(client, resource.model_name, version).tags
    assert tags["gate.decision"] == "promoted" and tags["gate.dagster_run_id"] == result.run_id
    assert tags["gate.holdout_fingerprint"] == data.holdout_fingerprint


def test_recommendations_table_matches_the_champion(trained):
    settings, data, resource, result = trained
    version = metadata_of(result, "challenger")["model_version"]
    rows = read_table(settings, "SELECT user_id, rank, item_id, score, model_version FROM recommendations "
                                "ORDER BY user_id, rank")
    frame = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "model_version"])
    assert set(frame["model_version"]) == {version}
    assert set(frame["user_id"]) == set(data.user_ids.astype(str))  # every known user
    assert frame.groupby("user_id")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1))).all()
    assert frame.groupby("user_id")["rank"].max().max() == 20
    assert (frame.groupby("user_id")["score"].apply(lambda s: np.all(np.diff(s.to_numpy()) <= 1e-6))).all()
    # seen items are never recommended
    seen = {(str(data.user_ids[u]), str(data.item_ids[i])) for u, i in zip(*data.train.nonzero())}
    assert not seen & set(zip(frame["user_id"], frame["item_id"]))
    assert metadata_of(result, "recommendations")["rows"] == len(frame)


def expected_rows(bundle, n: int, version: int) -> list[tuple]:
    """The table `recommendations` should hold: `recommend_many` for every user of the bundle, padding dropped,
    ids as VARCHAR, scores widened to DOUBLE, in (user_id, rank) order."""
    recs = bundle.recommend_many(bundle.user_ids, n=n)
    return sorted((str(user), rank + 1, str(bundle.item_ids[item]), float(score), version)
                  for row, user in enumerate(bundle.user_ids)
                  for rank, (item, score) in enumerate(zip(recs.item_index[row].tolist(), recs.scores[row].tolist()))
                  if item >= 0)


def test_recommendations_table_equals_recommend_many_for_every_user(trained):
    settings, data, resource, result = trained
    version = metadata_of(result, "challenger")["model_version"]
    bundle = model_registry.load_bundle(resource.tracking_uri, resource.model_name, version)
    table = read_table(settings, "SELECT user_id, rank, item_id, score, model_version FROM recommendations "
                                 "ORDER BY user_id, rank")
    # the holdout users' lists come from the evaluation's scoring call, the others from this asset's batches:
    # another batch shape may round a score differently in its last bit
    assert_same_lists(table, expected_rows(bundle, 20, version))
    kept = (bundle.users.lookup(np.unique(data.holdout_user_ids)) >= 0).sum()
    assert metadata_of(result, "recommendations")["prescored_users"] == kept > 0


def assert_same_lists(table: list[tuple], expected: list[tuple], rtol: float = 1e-5) -> None:
    """Rows (user, rank, item, score, version) equal but for float rounding: scores within ``rtol``, and items
    equal rank for rank except among scores that close, where only the set of items must match."""
    assert [(user, rank, version) for user, rank, _, _, version in table] == \
        [(user, rank, version) for user, rank, _, _, version in expected]
    assert np.allclose([row[3] for row in table], [row[3] for row in expected], rtol=rtol, atol=0)
    group_start = 0
    for position in range(1, len(expected) + 1):
        ends = (position == len(expected) or expected[position][0] != expected[group_start][0]
                or not np.isclose(expected[position][3], expected[position - 1][3], rtol=rtol, atol=0))
        if ends:
            assert sorted(row[2] for row in table[group_start:position]) == \
                sorted(row[2] for row in expected[group_start:position]), expected[group_start]
            group_start = position


def awkward_bundle(string_ids: bool):
    """A bundle with the awkward cases: a user without history (popularity), a user with fewer unseen items
    than 12 (padding). Integer-valued factors: scores are exact whatever the batch, so every row must match."""
    from als_core import ALS
    from als_core.bundle import ModelBundle

    rng = np.random.default_rng(7)
    n_users, n_items = 23, 300
    model = ALS(factors=3)
    model.user_factors = rng.integers(-2, 3, (n_users, 3)).astype(np.float32)
    model.item_factors = rng.integers(-2, 3, (n_items, 3)).astype(np.float32)
    seen = (rng.random((n_users, n_items)) < 0.1).astype(np.float32)
    seen[3] = 0  # no history: served from popularity
    seen[5] = 1
    seen[5, [10, 150, 299]] = 0  # 3 items left for n = 12
    user_ids, item_ids = np.arange(n_users) * 3 + 100, np.arange(n_items) * 7 + 1
    if string_ids:
        user_ids, item_ids = np.char.add("u-", user_ids.astype(str)), np.char.add("item ", item_ids.astype(str))
    return ModelBundle.build(model, user_ids, item_ids, sp.csr_matrix(seen))


AWKWARD = recommendations_table.TableModel("m", 4, "abc123", 12)


@pytest.mark.parametrize("string_ids", [False, True])
@pytest.mark.parametrize("prescored_users", [None, [0, 3, 5, 22]])
def test_staged_recommendations_replace_the_table_exactly(tmp_path, string_ids, prescored_users):
    """stage + replace on the awkward bundle in several batches, with some users' lists taken as scored
    (deeper than n, as the evaluation keeps them) instead of scored again."""
    bundle = awkward_bundle(string_ids)
    prescored = None
    if prescored_users is not None:
        deeper = bundle.recommend_many(bundle.user_ids[prescored_users], n=30)
        prescored = recommendations_table.PrescoredLists(np.array(prescored_users), deeper.item_index, deeper.scores)
    logged = []
    rows, staged = recommendations_table.stage(bundle, 4, 12, 5, tmp_path, logged.append, prescored)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        recommendations_table.ensure_schema(con)
        for _ in range(2):  # the second run replaces the first
            recommendations_table.replace(con, staged, AWKWARD)
        table = con.execute("SELECT * FROM recommendations ORDER BY user_id, rank").fetchall()
        assert recommendations_table.written_by(con) == AWKWARD
        assert recommendations_table.holds(con, AWKWARD) == len(table)
        assert recommendations_table.holds(con, recommendations_table.TableModel("m", 4, "other-run", 12)) is None
    expected = expected_rows(bundle, 12, 4)
    assert rows == len(expected) == 23 * 12 - 9
    assert table == expected
    scored_users = 23 - (0 if prescored is None else 4)
    assert f"scored users {scored_users}/{scored_users}" in logged[-1]


@pytest.mark.parametrize("string_ids", [False, True])
def test_top_k_lists_read_back_equal_scoring_or_are_refused(tmp_path, string_ids):
    """The lists `evaluation` reads back from the table are what recommend_many gives (unknown users and the
    user without history from popularity); another writer, too shallow a table or a missing row gives None."""
    bundle = awkward_bundle(string_ids)
    _, staged = recommendations_table.stage(bundle, 4, 12, 7, tmp_path, lambda message: None)
    unknown = "nobody" if string_ids else 99999
    users = np.array([*bundle.user_ids[[0, 3, 5, 9]], unknown], dtype=bundle.user_ids.dtype)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        recommendations_table.ensure_schema(con)
        recommendations_table.replace(con, staged, AWKWARD)
        lists = recommendations_table.top_k_lists(con, AWKWARD, bundle, users, 10)
        expected = bundle.recommend_many(users, n=10)
        assert np.array_equal(lists.item_index, expected.item_index)
        assert np.array_equal(lists.scores, expected.scores)
        assert list(lists.sources) == list(expected.sources) == ["als", "popularity", "als", "als", "popularity"]
        assert recommendations_table.top_k_lists(con, AWKWARD, bundle, users, 13) is None  # table is 12 deep
        other = recommendations_table.TableModel("m", 4, "another-run", 12)
        assert recommendations_table.top_k_lists(con, other, bundle, users, 10) is None
        con.execute("DELETE FROM recommendation_lists WHERE user_index = 9 AND rank = 7")  # users[3]
        assert recommendations_table.top_k_lists(con, AWKWARD, bundle, users, 10) is None


def test_pyfunc_loads_from_the_champion_alias_and_honours_n(trained):
    settings, data, resource, result = trained
    users = [int(u) for u in data.user_ids[:3]] + [987654321]  # the last one is unknown to the model
    with mlflow_store.using_tracking_uri(resource.tracking_uri):
        model = mlflow.pyfunc.load_model(f"models:/{resource.model_name}@champion")
        assert model.metadata.get_params_schema() is not None
        out = model.predict(pd.DataFrame({"user_id": users}), params={"n": 5})
    assert out.groupby("user_id").size().to_dict() == {u: 5 for u in users}
    sources = out.groupby("user_id")["source"].first()
    assert sources[987654321] == "popularity" and set(sources[users[:3]]) == {"als"}
    # the same items as the precomputed table (both come from the pinned champion version)
    first = str(users[0])
    table = [row[0] for row in read_table(
        settings, "SELECT item_id FROM recommendations WHERE user_id = ? AND rank <= 5 ORDER BY rank", [first])]
    assert [str(i) for i in out[out["user_id"] == users[0]].sort_values("rank")["item_id"]] == table


def test_a_new_champion_replaces_the_recommendations(settings):
    publish_training_data(settings)
    resource = mlflow_resource(settings)
    first = materialize(ALL_ASSETS, resource, settings, challenger=GOOD, recommendations={"n": 20})
    before = read_table(settings, "SELECT count(*), min(model_version) FROM recommendations")[0]
    assert before[1] == metadata_of(first, "challenger")["model_version"]
    result = materialize(ALL_ASSETS, resource, settings, challenger=BETTER, recommendations={"n": 20})
    assert metadata_of(result, "champion")["decision"] == "promoted"
    new_version = metadata_of(result, "challenger")["model_version"]
    assert read_table(settings, "SELECT DISTINCT model_version FROM recommendations") == [(new_version,)]
    assert read_table(settings, "SELECT count(*) FROM recommendations")[0][0] == before[0]


def test_recommendations_are_left_alone_while_they_hold_the_champions_top_n(settings):
    publish_training_data(settings)
    resource = mlflow_resource(settings)
    first = materialize(ALL_ASSETS, resource, settings, challenger=GOOD, recommendations={"n": 20})
    assert metadata_of(first, "recommendations")["rescored"] is True
    everything = "SELECT user_id, rank, item_id, score, model_version FROM recommendations ORDER BY user_id, rank"
    table = read_table(settings, everything)

    again = materialize([model_assets.recommendations], resource, settings, recommendations={"n": 20})
    assert metadata_of(again, "recommendations")["rescored"] is False
    assert metadata_of(again, "recommendations")["rows"] == len(table)
    assert read_table(settings, everything) == table

    # another depth, or force, scores again
    shallower = materialize([model_assets.recommendations], resource, settings, recommendations={"n": 5})
    assert metadata_of(shallower, "recommendations")["rescored"] is True
    assert read_table(settings, "SELECT max(rank) FROM recommendations") == [(5,)]
    forced = materialize([model_assets.recommendations], resource, settings, recommendations={"n": 5, "force": True})
    assert metadata_of(forced, "recommendations")["rescored"] is True

    # a stale table (another version's rows) is scored again
    with duckdb.connect(str(settings.duckdb_path)) as con:
        con.execute("UPDATE recommendation_lists SET model_version = model_version + 100 WHERE rank = 1")
    stale = materialize([model_assets.recommendations], resource, settings, recommendations={"n": 5})
    assert metadata_of(stale, "recommendations")["rescored"] is True
    assert read_table(settings, "SELECT DISTINCT model_version FROM recommendations") == [
        (metadata_of(first, "challenger")["model_version"],)]


def test_mlflow_unreachable_fails_the_challenger_and_leaves_the_champion(trained):
    settings, data, resource, _ = trained
    client = mlflow_store.make_client(resource.tracking_uri)
    champion_before = model_registry.aliases(client, resource.model_name)
    dead = mlflow_resource(settings, tracking_uri=closed_port_uri(), model_name=resource.model_name)
    result = materialize(GATE_ASSETS, dead, settings, challenger=BETTER, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "challenger"
    message = str(failure.event_specific_data.error)
    assert "unreachable" in message and "champion alias was not changed" in message
    # the same for a gate or a refresh started on its own while MLflow is down
    for asset in (model_assets.champion, model_assets.recommendations):
        alone = materialize([asset], dead, settings, raise_on_error=False)
        [failure] = [e for e in alone.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "unreachable" in str(failure.event_specific_data.error)
    assert model_registry.aliases(client, resource.model_name) == champion_before


def test_non_finite_factors_block_evaluation_and_register_nothing(settings, monkeypatch):
    publish_training_data(settings)
    resource = mlflow_resource(settings)
    real_fit = als_core.ALS.fit

    def diverging_fit(self, *args, **kwargs):  # fault injection: the fit "diverges"
        real_fit(self, *args, **kwargs)
        self.item_factors[0, 0] = np.nan
        return self

    monkeypatch.setattr(als_core.ALS, "fit", diverging_fit)
    result = materialize(GATE_ASSETS, resource, settings, challenger=GOOD, raise_on_error=False)
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "factors_finite" and not check.passed
    assert check.metadata["non_finite_item_factors"].value == 1
    steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert "evaluation" not in steps and "champion" not in steps
    client = mlflow_store.make_client(resource.tracking_uri)
    assert client.search_model_versions(f"name = '{resource.model_name}'") == []
    runs = client.search_runs([resource.experiment_id(client)])
    assert [r.info.status for r in runs] == ["FAILED"]  # the diverged run is kept for diagnosis


def test_the_numbers_an_operator_watches_come_first_in_dagster_and_mlflow(trained):
    settings, data, resource, result = trained
    meta = metadata_of(result, "champion")
    watched = ["challenger_ndcg_at_10", "popularity_ndcg_at_10", "promoted", "fit_seconds"]
    assert list(meta)[:4] == watched  # numeric, so Dagster plots them across materialisations
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("champion")]
    assert all(isinstance(event.materialization.metadata[key], (dg.FloatMetadataValue, dg.IntMetadataValue))
               for key in watched)
    client = mlflow_store.make_client(resource.tracking_uri)
    ref = model_registry.get_version(client, resource.model_name, meta["challenger_version"])
    run = client.get_run(ref.run_id)
    note = run.data.tags["mlflow.note.content"]
    assert note == client.get_model_version(resource.model_name, str(ref.version)).description
    assert note.startswith("**promoted**") and f"challenger v{ref.version} {meta['challenger_ndcg_at_10']:.4f}" in note
    assert f"popularity {meta['popularity_ndcg_at_10']:.4f}" in note
    assert f"ALS fit: {run.data.metrics['fit_seconds']:.1f} s" in note


def test_tuned_parameters_apply_unless_the_run_config_sets_them():
    resolve, Config = model_assets.resolve_hyperparameters, model_assets.ChallengerConfig
    params, sources = resolve(Config(), None)
    assert set(sources.values()) == {"default"} and params == DEFAULTS.replace(random_state=0)
    tuned = {"factors": 5, "alpha": 2.0}
    params, sources = resolve(Config(), tuned)
    assert (params.factors, params.alpha, params.regularization) == (5, 2.0, DEFAULTS.regularization)
    assert sources == {"factors": "tuning", "regularization": "default", "alpha": "tuning"}
    params, sources = resolve(Config(factors=7), tuned)
    assert (params.factors, params.alpha, sources["factors"]) == (7, 2.0, "config")
    params, sources = resolve(Config(use_tuned=False), tuned)
    assert (params.factors, sources["factors"]) == (DEFAULTS.factors, "default")
    with pytest.raises(ValueError, match="alpha must be"):  # checked by als_core.hyperparameters, once
        resolve(Config(alpha=-1.0), None)


def report_tuning(instance: dg.DagsterInstance, best_params: dict) -> None:
    """A `tuning` materialisation with this result, recorded by `instance` (as the tuning asset records one)."""
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "tuning", metadata={"best_params": dg.MetadataValue.json(best_params)}))


def test_a_launchpad_value_equal_to_the_default_still_wins_over_tuning(settings):
    """Typing `alpha: 40.0` (the default) in the run config must not be replaced by the tuned alpha."""
    publish_training_data(settings)
    resource = mlflow_resource(settings)
    with dg.instance_for_test() as instance:
        report_tuning(instance, {"factors": 6, "alpha": 2.0, "regularization": 3.0})
        result = materialize([model_assets.challenger], resource, settings, instance=instance,
                             challenger={"alpha": DEFAULTS.alpha, "iterations": 2})
    client = mlflow_store.make_client(resource.tracking_uri)
    ref = model_registry.get_version(client, resource.model_name, metadata_of(result, "challenger")["model_version"])
    run_params = client.get_run(ref.run_id).data.params
    assert float(run_params["alpha"]) == DEFAULTS.alpha
    assert (run_params["factors"], float(run_params["regularization"])) == ("6", 3.0)
    assert run_params["hyperparameters_from"] == "factors=tuning, regularization=tuning, alpha=config"


def test_a_bad_hyperparameter_fails_the_challenger_before_mlflow(settings):
    publish_training_data(settings)
    result = materialize([model_assets.challenger], mlflow_resource(settings), settings, raise_on_error=False,
                         challenger={"cg_steps": 0})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "cg_steps must be >= 1" in failure.step_failure_data.error.message
    assert not (settings.home / "mlflow.db").exists()  # no MLflow run was started for it


def test_evaluation_reads_the_champions_lists_from_the_table_and_scores_them_the_same(settings):
    """While `recommendations` holds the champion's lists, the evaluation judges the champion on them instead of
    scoring it again, with the same result; a table another model wrote is not trusted."""
    from als_core.bundle import evaluate_on_holdout

    data = publish_training_data(settings)
    resource = mlflow_resource(settings)
    first = materialize(ALL_ASSETS, resource, settings, challenger=GOOD, recommendations={"n": 20})
    champion_version = metadata_of(first, "challenger")["model_version"]
    champion_bundle = model_registry.load_bundle(resource.tracking_uri, resource.model_name, champion_version)
    rescored = evaluate_on_holdout(champion_bundle, data.holdout_user_ids, data.holdout_item_ids, k=10)["ndcg@10"]

    second = materialize(GATE_ASSETS, resource, settings, challenger=WEAK)  # not promoted: v1 stays champion
    evaluated = metadata_of(second, "evaluation")
    assert evaluated["champion_version"] == champion_version
    assert evaluated["champion_lists"] == "table recommendations"
    assert evaluated["champion_ndcg_at_10"] == pytest.approx(rescored, rel=1e-9)

    with duckdb.connect(str(settings.duckdb_path)) as con:  # as if another MLflow store's v1 had written it
        con.execute("UPDATE recommendations_model SET mlflow_run_id = 'elsewhere'")
    again = materialize([model_assets.evaluation], resource, settings,
                        evaluation={"version": metadata_of(second, "challenger")["model_version"]})
    assert metadata_of(again, "evaluation")["champion_lists"] == "scored"
    assert metadata_of(again, "evaluation")["champion_ndcg_at_10"] == pytest.approx(rescored, rel=1e-9)


def test_a_warehouse_locked_by_another_process_means_scoring_the_champion(settings):
    """Another process holding DuckDB's write lock (outside Dagster's pool) slows the evaluation down, it does
    not fail it: the champion is scored instead of read back."""
    import subprocess
    import sys

    from pipelines.defs.resources import DuckDBResource

    publish_training_data(settings)
    resource = mlflow_resource(settings)
    first = materialize(ALL_ASSETS, resource, settings, challenger=GOOD, recommendations={"n": 20})
    second = materialize(GATE_ASSETS[:1], resource, settings, challenger=WEAK)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('locked', flush=True); "
                               "time.sleep(60)", str(settings.duckdb_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = dg.materialize(
            [model_assets.evaluation],
            resources={**resources_of(resource, settings),
                       "duckdb": DuckDBResource(pipeline=resource.pipeline, lock_timeout_s=0.5)},
            run_config={"ops": {"evaluation": {"config": {
                "version": metadata_of(second, "challenger")["model_version"]}}}})
    finally:
        holder.kill()
        holder.wait(timeout=10)
    evaluated = metadata_of(result, "evaluation")
    assert evaluated["champion_version"] == metadata_of(first, "challenger")["model_version"]
    assert evaluated["champion_lists"] == "scored"
