"""When ALS loses to popularity, popularity is served: the baseline as a registered, promotable model.

On real components: the popularity bundle's files, the gate through the Dagster assets on a real MLflow sqlite
store and DuckDB file, rollback between the two kinds, the API under uvicorn on 127.0.0.1 serving both kinds
with hot reload, and (slow) a sparse multi-day log landed, ingested and retrained through the project's jobs,
where ALS loses and the API ends up serving the popularity champion."""

from __future__ import annotations

import dataclasses
import datetime as dt

import duckdb
import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from als_core import ALS
from als_core.bundle import KIND_ALS, KIND_POPULARITY, ModelBundle, NoItemFactors, evaluate_on_holdout
from als_core.weighting import EventWeighting
from model_half import ALL_ASSETS, GOOD, WEAK, materialize, metadata_of, mlflow_resource, publish_training_data, \
    small_training_data
from als_store import mlflow_store, model_registry, model_tags
from pipelines import recommendations_table
from pipelines.defs import model_assets
from pipelines.registry import gate, promotion, run_log
from als_store.settings import Settings
from serving.config import ServingConfig
from test_serving_api import items_of, serving, wait_for

# ------------------------------------------------------------------------------------------ the bundle


@pytest.fixture(scope="module")
def als_bundle() -> ModelBundle:
    rng = np.random.default_rng(0)
    train = sp.random(60, 40, density=0.2, format="csr", dtype=np.float32, random_state=1)
    train.data[:] = rng.choice([3.0, 10.0, 40.0], train.nnz)
    model = ALS(factors=4, iterations=3, random_state=0).fit(train)
    return ModelBundle.build(model, np.arange(60) + 100, np.arange(40) + 9000, train,
                             metadata={"training_window": ["2026-01-01", "2026-01-07"]})


def test_a_popularity_bundle_is_arrays_and_json_and_recommends_what_evaluation_measured(als_bundle, tmp_path):
    popularity = als_bundle.as_popularity(metadata={"counted_for_version": 3})
    saved = popularity.save(tmp_path / "bundle")
    assert sorted(path.name for path in saved.iterdir()) == ["bundle.json", "ids.npz", "popularity.npz", "seen.npz"]
    loaded = ModelBundle.load(saved)
    assert (loaded.kind, loaded.model, loaded.metadata) == (KIND_POPULARITY, None, {"counted_for_version": 3})
    assert ModelBundle.load(als_bundle.save(tmp_path / "als")).kind == KIND_ALS

    users = np.concatenate([als_bundle.user_ids, [1, 2, 3]])  # three users nobody knows
    served = loaded.recommend_many(users, n=7)
    measured = als_bundle.recommend_many(users, n=7, strategy="popularity")
    np.testing.assert_array_equal(served.item_index, measured.item_index)
    np.testing.assert_array_equal(served.scores, measured.scores)
    assert set(served.sources) == {"popularity"}
    for row in range(len(als_bundle.user_ids)):  # a known user's seen items are never recommended
        assert not set(served.item_index[row]) & set(als_bundle.seen[row].indices)
    unknown = served.items_of(len(users) - 1)[0]
    np.testing.assert_array_equal(unknown, als_bundle.item_ids[als_bundle.popularity.ranking[:7]])

    holdout_users, holdout_items = als_bundle.user_ids[:30], als_bundle.item_ids[np.arange(30) % 40]
    assert evaluate_on_holdout(loaded, holdout_users, holdout_items) == \
        evaluate_on_holdout(als_bundle, holdout_users, holdout_items, strategy="popularity")
    with pytest.raises(NoItemFactors):
        loaded.similar_items(als_bundle.item_ids[0])
    assert loaded.fold_in(als_bundle.item_ids[:2], n=3)[2] == "popularity"


def test_the_serving_scorer_answers_what_the_popularity_bundle_answers():
    """serving.scoring on a popularity bundle (one user, and batches past the block size) equals
    `recommend_many`, with heavy users whose seen items cover most of the head, and ties in the counts."""
    from serving.scoring import Scorer

    rng = np.random.default_rng(7)
    n_users, n_items = 300, 120
    density = np.where(np.arange(n_users) < 10, 0.9, 0.05)[:, None]  # ten users saw nearly everything
    train = sp.csr_matrix((rng.random((n_users, n_items)) < density).astype(np.float32) * rng.choice([3, 10, 40], (
        n_users, n_items)).astype(np.float32))
    bundle = ModelBundle.build_popularity(np.arange(n_users) * 7, np.arange(n_items) + 50, train)
    scorer = Scorer(bundle, max_n=100)
    rows = np.concatenate([np.arange(n_users), [-1, -1]])
    for n in (1, 10, 100):
        expected = bundle.recommend_many(np.concatenate([bundle.user_ids, [-5, -6]]), n=n)
        got = scorer.recommend_rows(rows, n)
        np.testing.assert_array_equal(got.item_index, expected.item_index)
        np.testing.assert_array_equal(got.scores, expected.scores)
        assert set(got.sources) == {"popularity"}
        for row in (0, 5, 150):
            single = scorer.recommend_rows(np.array([row]), n)
            np.testing.assert_array_equal(single.item_index[0], expected.item_index[row])
    with pytest.raises(NoItemFactors):
        scorer.similar_items(0, 5)


# ------------------------------------------------------------------------------------------ the rule


def test_the_gate_chooses_the_best_it_measured():
    def decide(challenger, champion, popularity, kind=KIND_ALS, **kw):
        return gate.decide(9, challenger, None if champion is None else 5, champion, popularity,
                           champion_kind=None if champion is None else kind, popularity_available=True, **kw)

    # no champion: whichever of challenger and popularity scores higher (a tie: popularity)
    assert decide(0.30, None, 0.20).promote
    for challenger in (0.10, 0.20, float("nan")):
        lost = decide(challenger, None, 0.20)
        assert (lost.promote, lost.promote_popularity, lost.rule) == (False, True, "popularity_first_model")
    # an ALS champion: the challenger must beat it (margin) and popularity; popularity replaces it only by
    # beating it by the margin too
    assert decide(0.31, 0.30, 0.20).promote
    assert not decide(0.30, 0.30, 0.20).changes_champion
    beaten = decide(0.10, 0.20, 0.25)
    assert (beaten.promote_popularity, beaten.rule) == (True, "popularity_beats_champion")
    assert not decide(0.10, 0.20, 0.25, margin=0.1).changes_champion
    # a popularity champion: an ALS challenger replaces it only by beating it (margin as for ALS) and
    # popularity; otherwise this retrain's counts replace the old ones, whatever they score
    assert decide(0.31, 0.30, 0.20, KIND_POPULARITY).promote
    assert not decide(0.31, 0.30, 0.20, KIND_POPULARITY, margin=0.02).promote
    refresh = decide(0.31, 0.30, 0.20, KIND_POPULARITY, margin=0.02)
    assert (refresh.promote_popularity, refresh.rule) == (True, "popularity_refresh")
    assert decide(0.10, 0.30, 0.05, KIND_POPULARITY).rule == "popularity_refresh"
    # the popularity counted on this very challenger's data is the champion already: nothing to do
    same = decide(0.10, 0.30, 0.30, KIND_POPULARITY, champion_popularity_of=9)
    assert (same.changes_champion, same.rule) == (False, "already_champion")
    # an unscorable champion: the better of challenger and popularity
    assert decide(0.30, float("nan"), 0.20).promote
    assert decide(0.10, float("nan"), 0.20).rule == "popularity_champion_unscorable"
    # a NaN popularity never wins; without a way to register popularity, the gate is the ALS-only one
    assert not decide(0.10, None, float("nan")).changes_champion
    assert not gate.decide(9, 0.10, None, None, 0.20).changes_champion
    assert set(gate.POPULARITY_RULES) <= set(gate.RULES)
    tags = decide(0.10, 0.20, 0.25).popularity_tags()
    assert tags["gate.challenger_ndcg_at_10"] == repr(0.25) and tags["gate.als_ndcg_at_10"] == repr(0.10)
    assert tags["gate.decision"] == "promoted" and tags["gate.rule"] == "popularity_beats_champion"


# ------------------------------------------------------------------------------------------ through the assets


def table_rows(settings: Settings) -> pd.DataFrame:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        rows = con.execute("SELECT user_id, rank, item_id, score, model_version FROM recommendations "
                           "ORDER BY user_id, rank").fetchall()
        writer = recommendations_table.written_by(con)
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "model_version"]), writer


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """Three retrains in one home: WEAK with no champion (popularity wins), WEAK on another day's data (the
    popularity champion is refreshed), GOOD on that data (it beats the popularity champion)."""
    with pytest.MonkeyPatch.context() as env:
        for name in ("MLFLOW_TRACKING_URI", "ALS_MODEL_NAME", "ALS_PIPELINE_START_DATE"):
            env.delenv(name, raising=False)
        settings = Settings.build(tmp_path_factory.mktemp("popularity") / "home")
        resource = mlflow_resource(settings)
        client = mlflow_store.make_client(resource.tracking_uri)
        out = {"settings": settings, "resource": resource, "client": client, "name": resource.model_name}
        out["data1"] = publish_training_data(settings, small_training_data(seed=1))
        out["first"] = materialize(ALL_ASSETS, resource, settings, challenger=WEAK, recommendations={"n": 20})
        out["first_aliases"] = model_registry.aliases(client, resource.model_name)
        out["first_found"] = (model_registry.find_version(client, resource.model_name).version,
                              model_registry.find_version(client, resource.model_name, out["first"].run_id).version)
        out["first_table"] = table_rows(settings)
        out["data2"] = publish_training_data(settings, small_training_data(seed=2))
        out["refresh"] = materialize(ALL_ASSETS, resource, settings, challenger=WEAK, recommendations={"n": 20})
        out["refresh_aliases"] = model_registry.aliases(client, resource.model_name)
        out["good"] = materialize(ALL_ASSETS, resource, settings, challenger=GOOD, recommendations={"n": 20})
        yield out


def test_with_no_champion_a_challenger_that_loses_to_popularity_makes_popularity_the_champion(sequence):
    client, name, data = sequence["client"], sequence["name"], sequence["data1"]
    result = sequence["first"]
    v1 = metadata_of(result, "challenger")["model_version"]
    evaluation, gate = metadata_of(result, "evaluation"), metadata_of(result, "champion")
    assert evaluation["challenger_ndcg_at_10"] < evaluation["popularity_ndcg_at_10"]
    assert gate["decision"] == "popularity promoted" and gate["rule"] == "popularity_first_model"
    v2 = gate["popularity_version"]
    assert (gate["champion_version"], gate["champion_kind"]) == (v2, "popularity") and v2 == v1 + 1
    assert sequence["first_aliases"] == {"champion": v2}

    challenger, popularity = model_registry.get_version(client, name, v1), model_registry.get_version(client, name, v2)
    assert challenger.kind == "als" and challenger.tags["gate.decision"] == "rejected"
    assert challenger.tags["gate.rule"] == "popularity_first_model"
    assert challenger.tags[model_tags.TAG_GATE_POPULARITY_VERSION] == str(v2)
    assert popularity.kind == "popularity" and popularity.tags[model_tags.TAG_POPULARITY_OF] == str(v1)
    assert popularity.tags["gate.decision"] == "promoted" and popularity.tags["gate.rule"] == "popularity_first_model"
    assert float(popularity.tags["gate.challenger_ndcg_at_10"]) == pytest.approx(evaluation["popularity_ndcg_at_10"])
    assert float(popularity.tags[model_tags.TAG_GATE_ALS_NDCG]) == pytest.approx(evaluation["challenger_ndcg_at_10"])
    for key in ("holdout_fingerprint", "training_window", model_tags.TAG_DAGSTER_RUN_ID, "gate.dagster_run_id"):
        assert popularity.tags[key] == challenger.tags.get(key, result.run_id), key
    for version in (v1, v2):  # MLflow's version page starts with the decision
        assert client.get_model_version(name, str(version)).description.startswith("**popularity promoted**")
    run = client.get_run(popularity.run_id)  # a run of its own, with the kind and what it was counted for
    assert run.info.run_id != challenger.run_id and run.info.status == "FINISHED"
    assert run.data.tags[model_tags.TAG_MODEL_KIND] == "popularity"
    assert run.data.metrics["eval_popularity_ndcg_at_10"] == pytest.approx(evaluation["popularity_ndcg_at_10"])
    # the popularity served is the popularity measured: re-scored on the challenger's holdout, the same NDCG
    bundle = model_registry.load_bundle(sequence["resource"].tracking_uri, name, v2)
    holdout = run_log.load_holdout(client, challenger.run_id)
    assert evaluate_on_holdout(bundle, *holdout)["ndcg@10"] == pytest.approx(evaluation["popularity_ndcg_at_10"])
    assert bundle.metadata["counted_for_version"] == v1
    assert bundle.metadata["training_window"] == [data.window_start, data.window_end]
    # a re-gate or re-evaluation of "the newest version" finds the ALS challenger, never the popularity one
    assert sequence["first_found"] == (v1, v1)

    # `recommendations` holds the popularity champion's lists: every known user, seen items excluded
    frame, writer = sequence["first_table"]
    assert (writer.version, writer.run_id) == (v2, popularity.run_id)
    assert set(frame["model_version"]) == {v2} and set(frame["user_id"]) == set(data.user_ids.astype(str))
    seen = {(str(data.user_ids[u]), str(data.item_ids[i])) for u, i in zip(*data.train.nonzero())}
    assert not seen & set(zip(frame["user_id"], frame["item_id"]))
    user = data.user_ids[0]
    expected = bundle.recommend_many([user], n=20).items_of(0)[0].astype(str).tolist()
    assert frame[frame["user_id"] == str(user)]["item_id"].tolist() == expected
    # and MLflow's own loader serves it the same way
    with mlflow_store.using_tracking_uri(sequence["resource"].tracking_uri):
        predicted = mlflow.pyfunc.load_model(f"models:/{name}/{v2}").predict(
            pd.DataFrame({"user_id": [user]}), params={"n": 5})
    assert predicted["item_id"].astype(str).tolist() == expected[:5] and set(predicted["source"]) == {"popularity"}


def test_a_popularity_champion_is_refreshed_and_replaced_only_by_an_als_challenger_that_beats_it(sequence):
    client, name = sequence["client"], sequence["name"]
    v2 = metadata_of(sequence["first"], "champion")["popularity_version"]

    refresh = sequence["refresh"]
    v3 = metadata_of(refresh, "challenger")["model_version"]
    evaluation, gate = metadata_of(refresh, "evaluation"), metadata_of(refresh, "champion")
    assert evaluation["champion_version"] == v2  # the popularity champion re-scored on this holdout,
    assert evaluation["champion_lists"] == "table recommendations"  # from the lists it wrote to the table
    # here it beats the old counts, but not this retrain's: the fresh counts replace the champion
    assert evaluation["champion_ndcg_at_10"] < evaluation["challenger_ndcg_at_10"] < evaluation["popularity_ndcg_at_10"]
    assert gate["decision"] == "popularity promoted" and gate["rule"] == "popularity_refresh"
    v4 = gate["popularity_version"]
    assert sequence["refresh_aliases"] == {"champion": v4, "previous_champion": v2}
    assert model_registry.get_version(client, name, v4).tags[model_tags.TAG_POPULARITY_OF] == str(v3)
    assert model_registry.get_version(client, name, v3).tags["gate.decision"] == "rejected"

    good = sequence["good"]
    v5 = metadata_of(good, "challenger")["model_version"]
    evaluation, gate = metadata_of(good, "evaluation"), metadata_of(good, "champion")
    assert evaluation["champion_version"] == v4
    assert evaluation["challenger_ndcg_at_10"] > max(evaluation["champion_ndcg_at_10"],
                                                     evaluation["popularity_ndcg_at_10"])
    assert gate["decision"] == "promoted" and gate["rule"] == "beats_champion" and gate["champion_kind"] == "als"
    assert model_registry.aliases(client, name) == {"champion": v5, "previous_champion": v4}
    # no popularity version registered on a retrain where popularity did not win
    versions = sorted(int(mv.version) for mv in client.search_model_versions(f"name = '{name}'"))
    assert versions == [1, 2, 3, 4, 5]


def test_rollback_between_kinds_and_the_api_serves_both_with_hot_reload(sequence, tmp_path):
    """Serving the ALS champion, a rollback makes the popularity version champion: the running API switches
    within a poll (/model says the kind, recommendations are the popularity lists without seen items,
    similar-items is a 404 that says why) and `recommendations` is rewritten from it; a second rollback brings
    ALS back, in the API too."""
    settings, resource, client, name = (sequence[key] for key in ("settings", "resource", "client", "name"))
    v4, v5 = 4, 5
    assert model_registry.aliases(client, name) == {"champion": v5, "previous_champion": v4}
    als, popularity = (model_registry.load_bundle(resource.tracking_uri, name, v) for v in (v5, v4))
    known = int(popularity.user_ids[np.argmax(np.diff(popularity.seen.indptr))])  # the user who saw the most
    item = int(als.item_ids[0])
    config = ServingConfig(model_name=name, tracking_uri=resource.tracking_uri, duckdb_path=settings.duckdb_path,
                           poll_seconds=0.2, fold_in=False, max_n=50)
    with serving(config) as api:
        wait_for(lambda: api.get("/ready").status_code == 200, 30, "the ALS champion to load")
        info = api.get("/model").json()
        assert (info["version"], info["kind"]) == (v5, "als") and info["factors"] == GOOD["factors"]
        assert api.get(f"/similar-items/{item}").status_code == 200
        assert api.get(f"/recommendations/{known}").json()["source"] == "als"

        assert promotion.rollback(client, name, resource.lock_path) == (v5, v4)
        wait_for(lambda: api.get("/model").json()["version"] == v4, 10, "the popularity version to be served")
        info = api.get("/model").json()
        assert (info["kind"], info["factors"]) == ("popularity", None)
        assert info["ndcg_at_10"] == pytest.approx(float(model_registry.get_version(client, name, v4).tags[
            "gate.challenger_ndcg_at_10"]))
        body = api.get(f"/recommendations/{known}", params={"n": 10}).json()
        reference = popularity.recommend_many([known], n=10)
        assert body["source"] == "popularity" and items_of(body) == reference.items_of(0)[0].tolist()
        seen = set(popularity.item_ids[popularity.seen[popularity.users.lookup([known])[0]].indices].tolist())
        assert seen and not seen & set(items_of(body))
        stranger = api.get("/recommendations/nobody-knows-me", params={"n": 10}).json()
        assert items_of(stranger) == popularity.item_ids[popularity.popularity.ranking[:10]].tolist()
        assert seen & set(items_of(stranger))  # the same head, without the known user's exclusions
        batch = api.post("/recommendations/batch", json={"user_ids": [known, "nobody-knows-me"], "n": 10}).json()
        assert [items_of(r) for r in batch["results"]] == [items_of(body), items_of(stranger)]
        similar = api.get(f"/similar-items/{item}")
        assert similar.status_code == 404 and "popularity model" in similar.json()["detail"]
        assert f"version {v4}" in similar.json()["detail"]

        rewritten = materialize([model_assets.recommendations], resource, settings, recommendations={"n": 20})
        assert metadata_of(rewritten, "recommendations")["champion_kind"] == "popularity"
        frame, writer = table_rows(settings)
        assert writer.version == v4 and set(frame["model_version"]) == {v4}

        assert promotion.rollback(client, name, resource.lock_path) == (v4, v5)
        wait_for(lambda: api.get("/model").json()["kind"] == "als", 10, "ALS to be served again")
        assert api.get(f"/similar-items/{item}").status_code == 200


def test_a_popularity_version_is_not_a_challenger(sequence):
    """Evaluating or gating a popularity version by its number is refused with a message, not misjudged."""
    import dagster as dg

    result = materialize([model_assets.champion], sequence["resource"], sequence["settings"], raise_on_error=False,
                         champion={"version": 2})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "is a popularity model" in failure.step_failure_data.error.message


# ------------------------------------------------------------------------------------------ a sparse log, end to end


@pytest.mark.slow
def test_a_sparse_multi_day_log_where_als_loses_ends_with_a_champion_the_api_serves(settings, pipeline):
    """A Taobao-like log (new visitors, a few events each on trending items, seven days) landed as daily files,
    ingested and retrained through the project's `ingest` and `daily_retrain` jobs on a fresh home: ALS loses
    to popularity, and instead of nothing to serve (every call a 503), the API serves the popularity
    champion."""
    import dagster as dg

    from pipelines.definitions import defs_at
    from pipelines.demo import sparse_events
    from pipelines.landing import write_day_files

    start = dt.date(2026, 1, 1)
    log = sparse_events(7, 3_000, n_users=4_000, n_items=2_000, start=start, seed=3)
    write_day_files(log, settings.landing_dir)
    definitions = defs_at(pipeline)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.instance_for_test() as instance:
        for day in range(7):
            definitions.resolve_job_def("ingest").execute_in_process(
                partition_key=(start + dt.timedelta(days=day)).isoformat(), instance=instance, run_config=quiet)
        retrain = definitions.resolve_job_def("daily_retrain").execute_in_process(instance=instance, run_config=quiet)
    assert retrain.success
    gate = metadata_of(retrain, "champion")
    assert gate["challenger_ndcg_at_10"] < gate["popularity_ndcg_at_10"]
    assert gate["decision"] == "popularity promoted" and gate["rule"] == "popularity_first_model"
    assert metadata_of(retrain, "recommendations")["champion_kind"] == "popularity"

    bundle = model_registry.load_bundle(settings.mlflow_tracking_uri, settings.model_name, gate["popularity_version"])
    assert bundle.weighting == EventWeighting(view_weight=3.0, cart_weight=10.0, purchase_weight=40.0,
                                              half_life_days=0.0)  # the challenger's, which `interactions` recorded
    assert bundle.metadata["training_window"][1] == "2026-01-07"  # (30 days ending on the last day, by default)

    with serving(dataclasses.replace(ServingConfig.from_env(settings.environment()), poll_seconds=0.2)) as api:
        wait_for(lambda: api.get("/ready").status_code == 200, 30, "the champion to load")
        info = api.get("/model").json()
        assert (info["version"], info["kind"]) == (gate["popularity_version"], "popularity")
        visitor = int(log["user_id"].iloc[0])
        body = api.get(f"/recommendations/{visitor}", params={"n": 5}).json()
        assert body["source"] == "popularity" and len(body["recommendations"]) == 5
        visited = set(log.loc[(log["user_id"] == visitor) & (log["ts"] < pd.Timestamp(start + dt.timedelta(days=6))),
                              "item_id"].tolist())
        assert visited and not visited & set(items_of(body))
        assert api.get("/similar-items/1").status_code == 404
