"""The Parquet files the pipeline and the Spark job (als_spark/job.py) exchange, pipeline side: training
coordinates and factors in, factors and staged top-N lists out. pyarrow, numpy and scipy only: no pyspark.

The schemas are the job's (it runs on clusters without this package, so it defines them): ids are int32, as
Spark's ALS requires, and are the rows and columns of the training snapshot's matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from als_spark.job import COORDS_SCHEMA, FACTORS_SCHEMA, STAGED_SCHEMA, factors_array

__all__ = ["COORDS_SCHEMA", "FACTORS_SCHEMA", "STAGED_SCHEMA", "merge_staged", "read_factors", "write_coords",
           "write_factors"]

_INT32_MAX = np.iinfo(np.int32).max
_ROWS_PER_GROUP = 1 << 22  # coordinates per Parquet row group (and per conversion, bounding memory)


def _check_int32(shape: tuple[int, ...]) -> None:
    if max(shape, default=0) > _INT32_MAX + 1:
        raise ValueError(f"Spark's ALS takes int32 ids: a {shape} matrix has more rows or columns than 2^31")


def write_coords(matrix: sp.csr_matrix, path: str | Path) -> int:
    """The stored entries of ``matrix`` as COORDS_SCHEMA Parquet (user = row, item = column, rating = value),
    row group by row group; returns the number of rows written."""
    matrix = sp.csr_matrix(matrix)
    if not matrix.has_canonical_format:  # Spark would add a duplicate pair's terms, not its values
        matrix = matrix.copy()
        matrix.sum_duplicates()
    _check_int32(matrix.shape)
    indptr = matrix.indptr
    bounds = [0]  # row ranges of at most _ROWS_PER_GROUP entries (or one row)
    while bounds[-1] < matrix.shape[0]:
        end = int(np.searchsorted(indptr, indptr[bounds[-1]] + _ROWS_PER_GROUP, side="right")) - 1
        bounds.append(min(max(end, bounds[-1] + 1), matrix.shape[0]))
    written = 0
    with pq.ParquetWriter(str(path), COORDS_SCHEMA) as writer:
        for start, end in zip(bounds[:-1], bounds[1:]):
            lo, hi = indptr[start], indptr[end]
            users = np.repeat(np.arange(start, end, dtype=np.int32), np.diff(indptr[start:end + 1]))
            writer.write_table(pa.table([users, matrix.indices[lo:hi].astype(np.int32),
                                         matrix.data[lo:hi].astype(np.float32)], schema=COORDS_SCHEMA))
            written += int(hi - lo)
    return written


def write_factors(factors: np.ndarray, path: str | Path) -> None:
    """Factors as FACTORS_SCHEMA Parquet, row i with id i (float32, as Spark holds them)."""
    factors = np.ascontiguousarray(factors, dtype=np.float32)
    if factors.ndim != 2:
        raise ValueError(f"factors must be 2-d, got shape {factors.shape}")
    _check_int32(factors.shape[:1])
    n_rows, n_factors = factors.shape
    offsets = np.arange(0, (n_rows + 1) * n_factors, n_factors, dtype=np.int32)
    features = pa.ListArray.from_arrays(pa.array(offsets), pa.array(factors.ravel()))
    pq.write_table(pa.table([np.arange(n_rows, dtype=np.int32), features], schema=FACTORS_SCHEMA), str(path))


def read_factors(path: str | Path, n_rows: int, n_factors: int) -> np.ndarray:
    """FACTORS_SCHEMA Parquet (a file, or a directory of part files as Spark writes them) as a float32
    (n_rows, n_factors) array; rows Spark did not return (no ratings) stay 0."""
    return factors_array(pq.read_table(str(path), columns=["id", "features"]), n_rows, n_factors)


def merge_staged(directory: str | Path, out_path: str | Path) -> int:
    """The STAGED_SCHEMA part files Spark wrote under ``directory`` as one Parquet file ``out_path`` (written as
    pipelines.recommendations_table writes its own); returns the number of rows."""
    parts = sorted(p for p in Path(directory).glob("*.parquet") if not p.name.startswith(("_", ".")))
    rows = 0
    with pq.ParquetWriter(str(out_path), STAGED_SCHEMA, compression="lz4", use_dictionary=False,
                          write_statistics=False) as writer:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches():
                table = pa.Table.from_batches([batch]).select(STAGED_SCHEMA.names).cast(STAGED_SCHEMA)
                writer.write_table(table)
                rows += table.num_rows
    return rows
