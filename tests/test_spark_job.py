"""The Spark engine's own parts: the Parquet exchange, the hyperparameter mapping, the job's top-N (against
als_core's), and the job itself through the `spark` resource on local[2] and on a real standalone cluster
(tests/spark_cluster.py): Spark's factors reach als_core's objective, Spark's top-N is the numba path's, and a
failing job fails the Dagster step with the job's error."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from als_core.hyperparameters import Hyperparameters
from als_core.synthetic import generate_user_items
from als_core.topk import score_top_n, top_n
from als_spark import exchange, job
from als_spark.params import als_core_equivalent, spark_als_params
from pipelines import recommendations_table


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
