"""`recommendations` scored on Spark (run config `engine: spark`) writes the rows the numba path writes.

The champion is a crafted bundle with integer-valued factors, so that float32 scores are exact on both engines and
tie often: the lists must match row for row, ties broken by item index. It has a user without a history (the
popularity fallback), a user with fewer unseen items than N and items no one has seen. A popularity champion has
no factors: the numba path scores it whatever the engine, and the metadata says so. Spark runs in the `spark`
resource's subprocess (local[2]), on a real MLflow sqlite store and DuckDB file.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from als_core import ALS
from als_core.bundle import ModelBundle
from als_core.topk import score_top_n
from als_store import model_tags
from model_half import metadata_of, mlflow_resource, resources_of
from pipelines import recommendations_table, scored_lists
from pipelines.defs import model_assets
from pipelines.defs.spark_resource import SparkEngine
from pipelines.registry import run_log
from spark_cluster import skip_without_spark, spark_java_home
from test_model_assets import assert_same_lists, expected_rows

N = 12
NO_HISTORY, HEAVY = 3, 5
NOBODY = [40, 41, 120, 121, 122, 123, 124]  # items no one has seen


def crafted_bundle() -> ModelBundle:
    """90 users x 200 items, integer-valued factors; user 3 without a history, user 5 with 10 unseen items (the
    3 left plus the items no one has seen: fewer than N)."""
    rng = np.random.default_rng(3)
    n_users, n_items = 90, 200
    model = ALS(factors=4)
    model.user_factors = rng.integers(-3, 4, (n_users, 4)).astype(np.float32)
    model.item_factors = rng.integers(-3, 4, (n_items, 4)).astype(np.float32)
    seen = (rng.random((n_users, n_items)) < 0.08).astype(np.float32)
    seen[NO_HISTORY] = 0
    seen[HEAVY] = 1
    seen[HEAVY, [10, 150, 199]] = 0
    seen[:, NOBODY] = 0
    return ModelBundle.build(model, np.arange(n_users) * 3 + 100, np.arange(n_items) * 7 + 1, sp.csr_matrix(seen))


def make_champion(mlflow, bundle: ModelBundle, directory: Path):
    """``bundle`` registered (kind tag from the bundle) and made the champion; its VersionRef."""
    client = mlflow.client()
    run_id = run_log.start_training_run(client, mlflow.experiment_id(client), f"crafted {bundle.kind}",
                                        {"training_window": "2026-01-01..2026-01-02"})
    ref = mlflow.register_bundle(run_id, bundle.save(directory / bundle.kind), bundle.user_ids[:2],
                                 {model_tags.TAG_MODEL_KIND: bundle.kind})
    run_log.finish_run(client, run_id)
    client.set_registered_model_alias(mlflow.model_name, model_tags.CHAMPION, str(ref.version))
    return mlflow.champion(client)


@pytest.fixture
def spark_local():
    """A `spark` resource on local[2] for a pipeline resource (skipped without pyspark and Java 17)."""
    skip_without_spark()
    return lambda pipeline: SparkEngine(pipeline=pipeline, master="local[2]", java_home=spark_java_home() or "")


def score_table(settings, resources: dict, engine: str) -> tuple[dict, list[tuple], recommendations_table.TableModel]:
    """`recommendations` materialised with ``engine`` (force: scored whatever the table holds): its metadata,
    the rows of the view in (user, rank) order and the recorded writer."""
    result = dg.materialize([model_assets.recommendations], resources=resources, run_config={
        "ops": {"recommendations": {"config": {"n": N, "engine": engine, "force": True}}}})
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        rows = con.execute("SELECT user_id, rank, item_id, score, model_version FROM recommendations "
                           "ORDER BY user_id, rank").fetchall()
        writer = recommendations_table.written_by(con)
    return metadata_of(result, "recommendations"), rows, writer


# ------------------------------------------------------------------------------------------ staging


def positional_scorer(bundle: ModelBundle, directory: Path, calls: list):
    """A `Scorer` that writes what an engine writes (Parquet parts, user_index = position in the rows it was
    given, users in reverse order) and reads it back through `staged_from`."""

    def score(rows: np.ndarray, n: int):
        calls.append(rows)
        recs = bundle.model.recommend(rows, bundle.seen, N=n)
        out = directory / "engine-out"
        out.mkdir()
        for part, positions in enumerate(np.array_split(np.arange(len(rows))[::-1], 3)):
            table = recommendations_table._batch(positions, recs[0][positions], recs[1][positions])
            pq.write_table(table, out / f"part-{part}.parquet")
        (out / "_SUCCESS").touch()
        yield from recommendations_table.staged_from(out, rows)

    return score


@pytest.mark.parametrize("prescored_users", [None, [0, 3, 7, 8, 60]])
def test_an_engine_stages_the_rows_the_bundle_stages(tmp_path, prescored_users):
    """`stage` with a scorer: the scorer gets the users with a history that no prescored list covers, its
    positional output becomes bundle rows, the user without a history keeps the popularity fallback; the staged
    rows equal those of the bundle's own scoring."""
    bundle = crafted_bundle()
    prescored = None
    if prescored_users is not None:
        deeper = bundle.recommend_many(bundle.user_ids[prescored_users], n=20)
        prescored = recommendations_table.PrescoredLists(np.array(prescored_users), deeper.item_index, deeper.scores)
    calls = []
    for name in ("numba", "engine", "popularity"):
        (tmp_path / name).mkdir()
    numba_rows, numba = recommendations_table.stage(bundle, 4, N, 25, tmp_path / "numba", lambda m: None, prescored)
    engine_rows, engine = recommendations_table.stage(bundle, 4, N, 25, tmp_path / "engine", lambda m: None, prescored,
                                                      positional_scorer(bundle, tmp_path, calls))
    expected = set(range(90)) - {NO_HISTORY} - set(prescored_users or [])
    assert [set(rows.tolist()) for rows in calls] == [expected]

    def staged(params):
        return pq.read_table(params["staged_files"][0]).sort_by([("user_index", "ascending"), ("rank", "ascending")])

    assert engine_rows == numba_rows == len(expected_rows(bundle, N, 4)) == 89 * N + 10
    assert staged(engine).equals(staged(numba))
    with pytest.raises(ValueError, match="kind popularity"):
        recommendations_table.stage(bundle.as_popularity(), 4, N, 25, tmp_path / "popularity", lambda m: None, None,
                                    positional_scorer(bundle, tmp_path, calls))


def test_ranking_factors_rank_as_the_model_with_item_biases():
    """An explicit model with item biases ranks by x.y + item bias: the factors handed to another engine carry
    the biases as one more column against ones, so plain dot products give the model's lists."""
    rng = np.random.default_rng(0)
    ratings = sp.random(40, 30, density=0.3, format="csr", dtype=np.float32, random_state=2)
    ratings.data = rng.integers(1, 6, ratings.nnz).astype(np.float32)
    model = ALS(factors=3, iterations=3, implicit=False, use_biases=True, random_state=0).fit(ratings)
    users, items = model_assets.ranking_factors(model)
    assert users.shape == (40, 4) and items.shape == (30, 4)
    ids, scores = score_top_n(np.ascontiguousarray(users), np.ascontiguousarray(items), 8, ratings)
    expected_ids, expected_scores = model.recommend(np.arange(40), ratings, N=8)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
    implicit = ALS(factors=3, iterations=1, random_state=0).fit(ratings)
    assert all(a is b for a, b in zip(model_assets.ranking_factors(implicit),
                                      (implicit.user_factors, implicit.item_factors)))


# ------------------------------------------------------------------------------------------ the asset


def test_a_popularity_champion_is_scored_by_numba_whatever_the_engine(settings, tmp_path):
    """No factors to hand to Spark: engine spark gives the numba path's rows, and the metadata says which engine
    scored and why (no Spark job runs: no Java needed)."""
    mlflow = mlflow_resource(settings)
    ref = make_champion(mlflow, crafted_bundle().as_popularity(), tmp_path)
    resources = resources_of(mlflow, settings)
    numba_meta, numba_rows, numba_writer = score_table(settings, resources, "numba")
    spark_meta, spark_rows, spark_writer = score_table(settings, resources, "spark")
    assert spark_rows == numba_rows and len(numba_rows) == 89 * N + 10
    assert spark_writer == numba_writer == recommendations_table.TableModel(ref.name, ref.version, ref.run_id, N)
    assert (numba_meta["engine"], spark_meta["engine"]) == ("numba", "numba")
    assert "popularity" in spark_meta["engine_note"] and "spark" in spark_meta["engine_note"]
    assert "engine_note" not in numba_meta
    assert not any(key.startswith("spark") for key in spark_meta)


@pytest.mark.slow
def test_spark_writes_the_rows_numba_writes(settings, tmp_path, spark_local):
    """Each champion scored by both engines: the same rows, the same recorded writer, only the champion's known
    users. The crafted champion (exact scores, many ties: row for row, ties by item index) comes with the
    evaluation's prescored lists (the promotion day: Spark scores the others); then a fitted champion (float
    factors: scores to float32 tolerance, items as sets only among scores that close) with none kept (Spark
    scores every user with a history)."""
    mlflow = mlflow_resource(settings)
    resources = {**resources_of(mlflow, settings), "spark": spark_local(mlflow.pipeline)}
    crafted = crafted_bundle()
    fitted = ModelBundle.build(ALS(factors=8, iterations=5, random_state=0).fit(crafted.seen), crafted.user_ids,
                               crafted.item_ids, crafted.seen)
    for position, (bundle, kept, exact) in enumerate(((crafted, [0, 1, 7, 30, 31, 60], True), (fitted, [], False))):
        ref = make_champion(mlflow, bundle, tmp_path / f"champion-{position}")
        if kept:
            deeper = bundle.recommend_many(bundle.user_ids[kept], n=20)
            scored_lists.save(settings, ref.run_id, recommendations_table.PrescoredLists(
                np.array(kept), deeper.item_index, deeper.scores))
        numba_meta, numba_rows, numba_writer = score_table(settings, resources, "numba")
        assert_same_lists(numba_rows, expected_rows(bundle, N, ref.version))
        assert {row[0] for row in numba_rows} == {str(user) for user in bundle.user_ids}  # the known users only
        assert sum(row[0] == str(bundle.user_ids[HEAVY]) for row in numba_rows) == 10 < N
        assert {str(bundle.item_ids[item]) for item in NOBODY} <= {row[2] for row in numba_rows}

        spark_meta, spark_rows, spark_writer = score_table(settings, resources, "spark")
        if exact:
            assert spark_rows == numba_rows
        assert_same_lists(spark_rows, numba_rows)
        assert spark_writer == numba_writer == recommendations_table.TableModel(ref.name, ref.version, ref.run_id, N)
        assert spark_meta["engine"] == "spark" and spark_meta["prescored_users"] == len(kept)
        assert spark_meta["spark_users"] == 90 - 1 - len(kept)  # user 3 has no history: popularity, here
        assert spark_meta["spark"]["master"] == "local[2]"
        assert spark_meta["spark_seconds_moving"] > 0 and spark_meta["spark_seconds_scoring"] > 0
        assert {key: numba_meta[key] for key in ("rows", "users", "distinct_items", "champion_version")} == \
            {key: spark_meta[key] for key in ("rows", "users", "distinct_items", "champion_version")}
