"""The Spark engine's own parts: the Parquet exchange, the hyperparameter mapping, the job's top-N (against
als_core's), and the job itself through the `spark` resource on local[2] and on a real standalone cluster
(tests/spark_cluster.py): Spark's factors reach als_core's objective, Spark's top-N is the numba path's, and a
failing job fails the Dagster step with the job's error."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from als_core.als import ALS
from als_core.hyperparameters import Hyperparameters
from als_core.synthetic import generate_user_items
from als_core.topk import score_top_n, top_n
from als_spark import exchange, job
from als_spark.params import als_core_equivalent, spark_als_params
from pipelines import recommendations_table
from pipelines.defs.resources import build_resources
from pipelines.defs.spark_resource import SparkEngine, SparkUnavailable
from spark_cluster import skip_without_spark


# ---------------------------------------------------------------------------------------------- exchange
def test_coords_round_trip(tmp_path):
    matrix = generate_user_items(300, 80, 2000, seed=1)
    path = tmp_path / "coords.parquet"
    assert exchange.write_coords(matrix, path) == matrix.nnz
    table = pq.read_table(path)
    assert table.schema == exchange.COORDS_SCHEMA
    back = sp.csr_matrix((table["rating"].to_numpy(), (table["user"].to_numpy(), table["item"].to_numpy())),
                         shape=matrix.shape)
    assert (back != matrix).nnz == 0


def test_coords_in_row_groups_and_duplicates(tmp_path, monkeypatch):
    monkeypatch.setattr(exchange, "_ROWS_PER_GROUP", 7)
    matrix = generate_user_items(50, 30, 400, seed=2)
    exchange.write_coords(matrix, tmp_path / "c.parquet")
    assert pq.ParquetFile(tmp_path / "c.parquet").num_row_groups > 10
    assert pq.read_table(tmp_path / "c.parquet").num_rows == matrix.nnz
    # a pair stored twice is one rating with the summed value
    doubled = sp.csr_matrix((np.array([1.0, 2.0, 5.0], np.float32), np.array([3, 3, 1]), np.array([0, 2, 3])),
                            shape=(2, 4))
    assert exchange.write_coords(doubled, tmp_path / "d.parquet") == 2
    assert pq.read_table(tmp_path / "d.parquet").to_pylist() == [{"user": 0, "item": 3, "rating": 3.0},
                                                                 {"user": 1, "item": 1, "rating": 5.0}]
    assert exchange.write_coords(sp.csr_matrix((0, 5), dtype=np.float32), tmp_path / "e.parquet") == 0
    assert pq.read_table(tmp_path / "e.parquet").schema == exchange.COORDS_SCHEMA


def test_factors_round_trip_and_missing_rows(tmp_path):
    factors = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float64)
    exchange.write_factors(factors, tmp_path / "f.parquet")
    assert pq.read_table(tmp_path / "f.parquet").schema == exchange.FACTORS_SCHEMA
    back = exchange.read_factors(tmp_path / "f.parquet", 40, 6)
    assert back.dtype == np.float32 and np.array_equal(back, factors.astype(np.float32))
    # Spark writes a directory of part files with only the rows that had ratings
    parts = tmp_path / "spark_like"
    parts.mkdir()
    features = pa.array([[1.0, 2.0], [3.0, 4.0]], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": pa.array([4], pa.int32()), "features": features.slice(0, 1)}),
                   parts / "part-00000.parquet")
    pq.write_table(pa.table({"id": pa.array([1], pa.int32()), "features": features.slice(1, 1)}),
                   parts / "part-00001.parquet")
    (parts / "_SUCCESS").write_text("")
    back = exchange.read_factors(parts, 6, 2)
    assert back.tolist() == [[0, 0], [3, 4], [0, 0], [0, 0], [1, 2], [0, 0]]
    with pytest.raises(ValueError, match="3 values"):
        exchange.read_factors(parts, 6, 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        exchange.read_factors(parts, 3, 2)


def test_staged_schema_is_the_recommendations_tables(tmp_path):
    assert exchange.STAGED_SCHEMA == recommendations_table._STAGED_SCHEMA
    parts = tmp_path / "staged"
    parts.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"user_index": [i, i], "rank": [1, 2], "item_index": [7, 3], "score": [2.0, 1.0]},
                                schema=exchange.STAGED_SCHEMA), parts / f"part-{i:05d}.snappy.parquet")
    (parts / "_SUCCESS").write_text("")
    assert exchange.merge_staged(parts, tmp_path / "out.parquet") == 6
    merged = pq.read_table(tmp_path / "out.parquet")
    assert merged.schema == exchange.STAGED_SCHEMA and merged.num_rows == 6


# ---------------------------------------------------------------------------------------------- params
def test_spark_params_and_the_als_core_equivalent():
    hp = Hyperparameters(factors=16, iterations=7, regularization=0.5, alpha=12.0, random_state=3)
    assert spark_als_params(hp) == {"rank": 16, "maxIter": 7, "regParam": 0.5, "alpha": 12.0, "implicitPrefs": True,
                                    "seed": 3, "nonnegative": False}
    assert spark_als_params(hp.replace(random_state=None))["seed"] == 0
    assert spark_als_params(hp.replace(implicit=False))["implicitPrefs"] is False
    same = als_core_equivalent(hp)
    assert same == hp.replace(weighted_regularization=True, solver="cholesky")
    assert als_core_equivalent(hp.replace(dtype="float64")).dtype == "float64"  # Spark is float32: fine
    with pytest.raises(ValueError, match="biases"):
        spark_als_params(hp.replace(implicit=False, use_biases=True))
    with pytest.raises(ValueError, match="tol"):
        als_core_equivalent(hp.replace(tol=1e-4))


# ---------------------------------------------------------------------------------------------- the job's top-N
def test_top_n_rows_is_als_cores_selection():
    rng = np.random.default_rng(5)
    # few distinct values: ties everywhere, also across the n-th place; -inf and NaN never returned
    scores = rng.integers(0, 6, size=(200, 40)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    scores[rng.random(scores.shape) < 0.05] = np.nan
    scores[3, :] = -np.inf  # nothing eligible
    scores[4, 5:] = -np.inf  # fewer than n eligible
    for n in (1, 7, 40, 60):
        expected = top_n(scores.copy(), n)
        got = job.top_n_rows(scores.copy(), n)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def _score_batch_lists(user_factors, item_factors, seen: sp.csr_matrix, n: int) -> pa.Table:
    """The job's scoring of one Arrow batch of every user, as STAGED_SCHEMA rows."""
    seen_lists = [None if seen.indptr[u] == seen.indptr[u + 1] else seen.indices[seen.indptr[u]:seen.indptr[u + 1]]
                  .tolist() for u in range(seen.shape[0])]
    k = user_factors.shape[1]
    batch = pa.RecordBatch.from_arrays(
        [pa.array(np.arange(len(user_factors), dtype=np.int32)),
         pa.ListArray.from_arrays(pa.array(np.arange(0, (len(user_factors) + 1) * k, k, dtype=np.int32)),
                                  pa.array(user_factors.ravel())),
         pa.array(seen_lists, pa.list_(pa.int32()))], names=["user", "features", "seen"])
    return pa.Table.from_batches(list(job.score_batch(batch, item_factors, n)), schema=exchange.STAGED_SCHEMA)


def numba_staged(user_factors, item_factors, seen: sp.csr_matrix, n: int) -> pa.Table:
    """The numba path's top-N (als_core.topk.score_top_n, as ALS.recommend runs it) as staged rows."""
    ids, best = score_top_n(user_factors, item_factors, n, excluded=seen)
    return recommendations_table._batch(np.arange(len(user_factors)), ids, best)


def seen_matrix_with_edge_users(n_users: int, n_items: int, seed: int) -> sp.csr_matrix:
    """Interactions where user 0 has seen every item but 4, user 1 nothing, and item 0 is seen by nobody."""
    matrix = generate_user_items(n_users, n_items, n_users * 6, seed=seed).tolil()
    matrix[0, :] = 1.0
    matrix[0, [2, 5, 11]] = 0.0
    matrix[1, :] = 0.0
    matrix[:, 0] = 0.0
    matrix = matrix.tocsr()
    matrix.eliminate_zeros()
    return matrix


def test_score_batch_is_the_numba_top_n():
    seen = seen_matrix_with_edge_users(120, 60, seed=3)
    rng = np.random.default_rng(1)
    users = rng.standard_normal((120, 8)).astype(np.float32)
    items = rng.standard_normal((60, 8)).astype(np.float32)
    items[[20, 7]] = items[40]  # equal scores: the lower item index first
    got = _score_batch_lists(users, items, seen, 10)
    assert got.equals(numba_staged(users, items, seen, 10))
    user0 = got.filter(pa.compute.equal(got["user_index"], 0))
    unseen = [0, 2, 5, 11]  # item 0 is nobody's
    assert user0["item_index"].to_pylist() == sorted(unseen, key=lambda i: -float(users[0] @ items[i]))
    assert got.filter(pa.compute.equal(got["user_index"], 1)).num_rows == 10


# ---------------------------------------------------------------------------------------------- the resource
def test_the_pipes_transport_picks_the_platforms_loader_and_writer():
    import dagster_pipes

    assert job.pipes_io("default") == {}
    dbfs = job.pipes_io("dbfs")
    assert isinstance(dbfs["context_loader"], dagster_pipes.PipesDbfsContextLoader)
    assert isinstance(dbfs["message_writer"], dagster_pipes.PipesDbfsMessageWriter)
    with pytest.raises(ValueError, match="--pipes-transport is one of default, dbfs, s3"):
        job.pipes_io("gcs")


def test_spark_engine_from_the_environment(pipeline):
    engine = SparkEngine.from_env(pipeline, environ={})
    assert (engine.master_url, engine.conf) == ("local[*]", {})
    assert engine.exchange_root == pipeline.settings.home / "spark"
    engine = SparkEngine.from_env(pipeline, environ={"ALS_SPARK_MASTER": "spark://h:7077",
                                                     "ALS_SPARK_EXCHANGE_DIR": "/mnt/x",
                                                     "ALS_SPARK_CONF": '{"spark.executor.memory": "4g", "a": true}'})
    assert isinstance(engine.master, dg.EnvVar) and engine.master.env_var_name == "ALS_SPARK_MASTER"
    assert isinstance(engine.exchange_dir, dg.EnvVar) and engine.exchange_dir.env_var_name == "ALS_SPARK_EXCHANGE_DIR"
    assert engine.conf == {"spark.executor.memory": "4g", "a": "true"}
    with pytest.raises(ValueError, match="ALS_SPARK_CONF must be a JSON object"):
        SparkEngine.from_env(pipeline, environ={"ALS_SPARK_CONF": "spark.executor.memory=4g"})
    assert isinstance(build_resources(pipeline)["spark"], SparkEngine)


def test_without_java_the_step_fails_before_any_work(pipeline, tmp_path):
    engine = SparkEngine(pipeline=pipeline, master="local[2]", java_home=str(tmp_path / "no-java"),
                         exchange_dir=str(tmp_path / "exchange"))
    with pytest.raises(SparkUnavailable, match=r"needs the `spark` extra \(make install-spark\) and Java 17"):
        engine.fit(dg.build_asset_context(), generate_user_items(20, 10, 50), Hyperparameters(factors=2))
    assert not (tmp_path / "exchange").exists()
    # Spark Connect: the client runs no JVM, so no Java is needed
    SparkEngine(pipeline=pipeline, master="sc://127.0.0.1:15002", java_home=str(tmp_path / "no-java")
                ).check_available()


def run_in_step(engine: SparkEngine, call) -> tuple[dg.ExecuteInProcessResult, list, list[str]]:
    """``call(context, spark)`` in a Dagster asset's step with ``engine`` as the `spark` resource: the run's
    result, what the call returned, and the run's log messages."""
    results = []

    @dg.asset(required_resource_keys={"spark"})
    def spark_work(context) -> dg.MaterializeResult:
        results.append(call(context, context.resources.spark))
        return dg.MaterializeResult()  # Pipes makes the step's results typed

    with dg.instance_for_test() as instance:
        result = dg.materialize([spark_work], resources={"spark": engine}, instance=instance, raise_on_error=False)
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result, results, messages


def fit_objectives(train: sp.csr_matrix, hp: Hyperparameters, user_factors, item_factors) -> tuple[float, float]:
    """als_core's objective of ``hp`` (as Spark minimises it) for the given factors, and for als_core's own
    cholesky fit of it on ``train``."""
    same = als_core_equivalent(hp)
    spark_model = ALS.from_hyperparameters(same)
    spark_model.user_factors, spark_model.item_factors = user_factors, item_factors
    core_model = ALS.from_hyperparameters(same).fit(train)
    return spark_model.objective(train), core_model.objective(train)


@pytest.mark.slow
def test_spark_fit_reaches_als_cores_objective(spark_master, pipeline, tmp_path):
    train = generate_user_items(500, 200, 8000, seed=4)
    train[7, :] = 0  # a user without ratings: Spark returns no factors for it, it stays 0
    train.eliminate_zeros()
    # lambda 1: both converge within 15 iterations from their different starts (at lambda 0.05 Spark's larger
    # initial factors are 4% lower after 12 iterations, and als_core catches up only after ~60)
    hp = Hyperparameters(factors=8, iterations=15, regularization=1.0, alpha=10.0, random_state=1)
    engine = SparkEngine(pipeline=pipeline, master=spark_master, exchange_dir=str(tmp_path / "exchange"))
    result, fits, messages = run_in_step(engine, lambda context, spark: spark.fit(context, train, hp))
    assert result.success, result.get_step_failure_events()
    [fit] = fits
    assert fit.user_factors.shape == (500, 8) and fit.item_factors.shape == (200, 8)
    assert fit.user_factors.dtype == fit.item_factors.dtype == np.float32
    assert not fit.user_factors[7].any() and fit.user_factors.any(axis=1).sum() == 499
    spark_objective, core_objective = fit_objectives(train, hp, fit.user_factors, fit.item_factors)
    assert abs(spark_objective - core_objective) <= 0.01 * core_objective, (spark_objective, core_objective)

    report = fit.report
    assert report["engine"] == "spark" and report["spark_version"].startswith("4.")
    assert report["master"] == spark_master and report["n_ratings"] == train.nnz
    assert report["executors"] == 1 and report["executor_cores"] == 2
    assert fit.seconds_fitting == report["seconds_fit"] > 0 and fit.seconds_moving > 0
    assert list((tmp_path / "exchange").iterdir()) == []  # the run's directory is gone after success
    print(f"\nspark fit on {spark_master}: {report['seconds_fit']:.1f}s fit, {report['seconds_read']:.1f}s read, "
          f"{report['seconds_write']:.1f}s write, {report['seconds_job']:.1f}s job; objective {spark_objective:.6f} "
          f"vs als_core {core_objective:.6f}")
    assert any("fitted ALS" in message for message in messages), messages  # the job's progress, in the step's log


@pytest.mark.slow
def test_spark_score_is_the_numba_top_n(spark_master, pipeline, tmp_path):
    seen = seen_matrix_with_edge_users(300, 90, seed=6)
    rng = np.random.default_rng(2)
    users = rng.standard_normal((300, 8)).astype(np.float32)
    items = rng.standard_normal((90, 8)).astype(np.float32)
    items[[30, 12]] = items[60]  # equal scores: the lower item index first
    engine = SparkEngine(pipeline=pipeline, master=spark_master, exchange_dir=str(tmp_path / "exchange"))
    out = tmp_path / "staged.parquet"
    result, scores, _ = run_in_step(engine, lambda context, spark: spark.score(context, users, items, seen, 10, out))
    assert result.success, result.get_step_failure_events()
    [score] = scores
    staged = pq.read_table(out)
    assert staged.schema == exchange.STAGED_SCHEMA and score.rows_written == staged.num_rows
    expected = numba_staged(users, items, seen, 10)
    assert staged.sort_by([("user_index", "ascending"), ("rank", "ascending")]).equals(expected)
    assert staged.filter(pa.compute.equal(staged["user_index"], 0)).num_rows == 4  # items 0, 2, 5, 11 unseen
    assert score.report["n_users"] == 300 and score.seconds_scoring > 0
    print(f"\nspark score on {spark_master}: {score.report['seconds_score']:.1f}s scoring, "
          f"{score.seconds_moving:.1f}s moving, {score.report['seconds_job']:.1f}s job")


@pytest.mark.slow
def test_a_failing_job_fails_the_step_with_its_error(pipeline, tmp_path):
    skip_without_spark()
    engine = SparkEngine(pipeline=pipeline, master="local[1]", exchange_dir=str(tmp_path / "exchange"),
                         conf={"spark.driver.memory": "1x"})  # the driver's JVM cannot start
    result, _, _ = run_in_step(engine, lambda context, spark: spark.fit(context, generate_user_items(30, 10, 80),
                                                                     Hyperparameters(factors=2, iterations=1)))
    assert not result.success
    [failure] = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("Spark fit job on local[1] failed: ")
    assert "JAVA_GATEWAY_EXITED" in description and "Invalid maximum heap size" in description
    [run_dir] = (tmp_path / "exchange").iterdir()  # kept for a look, with the job's log
    assert (run_dir / "job.log").exists() and "coords.parquet" in {p.name for p in run_dir.iterdir()}


@pytest.mark.slow
def test_fit_and_score_through_spark_connect(spark_connect, pipeline, tmp_path):
    """sc:// runs the same job through a Spark Connect client: no JVM on this side, the item factors travel
    with the scoring function instead of a broadcast."""
    train = generate_user_items(300, 120, 4000, seed=8)
    hp = Hyperparameters(factors=6, iterations=15, regularization=1.0, alpha=10.0, random_state=2)
    engine = SparkEngine(pipeline=pipeline, master=spark_connect, exchange_dir=str(tmp_path / "exchange"),
                         java_home=str(tmp_path / "no-java"))  # a Connect client needs no Java
    out = tmp_path / "staged.parquet"

    def fit_and_score(context, spark):
        fit = spark.fit(context, train, hp)
        return fit, spark.score(context, fit.user_factors, fit.item_factors, train, 5, out)

    result, [(fit, score)], _ = run_in_step(engine, fit_and_score)
    assert result.success, result.get_step_failure_events()
    spark_objective, core_objective = fit_objectives(train, hp, fit.user_factors, fit.item_factors)
    assert abs(spark_objective - core_objective) <= 0.01 * core_objective, (spark_objective, core_objective)
    assert fit.report["master"] == spark_connect and fit.report["executors"] is None
    staged = pq.read_table(out).sort_by([("user_index", "ascending"), ("rank", "ascending")])
    assert staged.equals(numba_staged(fit.user_factors, fit.item_factors, train, 5))
    print(f"\nspark fit through Spark Connect: {fit.report['seconds_fit']:.1f}s fit, "
          f"{fit.report['seconds_job']:.1f}s job; score {score.report['seconds_score']:.1f}s")
