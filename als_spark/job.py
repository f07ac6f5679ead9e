"""The Spark side of the engine: one script that fits implicit ALS, or scores every user's top-N, on the Spark it
is given, reading and writing Parquet in an exchange directory.

    python job.py --spec spec.json            # what the pipeline runs (dagster's PipesSubprocessClient)
    spark-submit job.py --spec spec.json      # the same script on a cluster (or a Databricks / EMR Pipes client)

It imports the standard library, numpy, pyarrow, pyspark and, when installed, dagster_pipes: nothing of this
project, which a cluster does not have. Under Dagster Pipes it logs its progress to the step and reports its
result with `report_custom_message`; it always writes the report to the spec's `report_out`, and on failure the
error (`{"error": ..., "traceback": ...}`) before it exits non-zero.

The spec (JSON):
- common: `mode` ("fit" | "score"), `master` (`local[*]`, `spark://host:7077`, `sc://host:15002` for Spark
  Connect, or null: the session the platform gives, e.g. under spark-submit), `app_name`, `conf` (Spark conf,
  over the defaults of `default_conf`), `report_out`, and optionally `log_out` (this process's and the JVM's
  stdout/stderr go to that file) and `checkpoint_dir` (ALS checkpoints its lineage there every 10 iterations).
- fit: `coords` (COORDS_SCHEMA Parquet), `params` (keyword arguments of pyspark.ml.recommendation.ALS),
  `user_factors_out`, `item_factors_out` (FACTORS_SCHEMA Parquet directories: Spark's userFactors/itemFactors,
  one row per user/item with at least one rating).
- score: `user_factors`, `item_factors` (FACTORS_SCHEMA Parquet), `n_items`, `seen` (COORDS_SCHEMA Parquet: the
  pairs to exclude), `n`, `staged_out` (a directory of STAGED_SCHEMA Parquet part files: for every user row, its
  top-`n` unseen items, rank 1 = best; score descending, ties by lower item index, as als_core's top-N).

ALS's partitioning (numUserBlocks/numItemBlocks, executors, cores) does not change what an iteration computes:
every row is solved exactly against all the other side's factors. It changes only the random start (Spark seeds
each block's initial factors from `seed` and the block's id): the same data fitted on local[2] and on a
standalone cluster gave the same objective to 6 digits; 1, 3 or 10 blocks, within 0.3% of each other after 30
iterations. A long ALS lineage overflows the driver's stack without checkpoints (30 iterations did, 15 did not):
classic sessions checkpoint into `checkpoint_dir`; behind Spark Connect set the server's `spark.checkpoint.dir`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

COORDS_SCHEMA = pa.schema([("user", pa.int32()), ("item", pa.int32()), ("rating", pa.float32())])
FACTORS_SCHEMA = pa.schema([("id", pa.int32()), ("features", pa.list_(pa.float32()))])
STAGED_SCHEMA = pa.schema([("user_index", pa.int32()), ("rank", pa.int32()), ("item_index", pa.int32()),
                           ("score", pa.float32())])
_STAGED_DDL = "user_index int, rank int, item_index int, score float"

# Scores computed at once per block of users: 4M float32 (16 MB) per Python worker.
_SCORE_CELLS = 1 << 22
# Users per scoring partition at most (more partitions than cores when there are many users).
_USERS_PER_PARTITION = 50_000

Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- Arrow <-> numpy
def list_matrix(features: pa.Array | pa.ChunkedArray, n_factors: int) -> np.ndarray:
    """A list<float> column whose lists all have ``n_factors`` values, as a (rows, n_factors) float32 array."""
    if features.null_count:
        raise ValueError("factor vectors must not be null")
    lengths = pc.list_value_length(features)
    if len(features) and (pc.min(lengths).as_py() != n_factors or pc.max(lengths).as_py() != n_factors):
        raise ValueError(f"factor vectors must have {n_factors} values each, got lengths "
                         f"{pc.min(lengths).as_py()}..{pc.max(lengths).as_py()}")
    values = pc.list_flatten(features).to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values, dtype=np.float32).reshape(len(features), n_factors)


def factors_array(table: pa.Table, n_rows: int, n_factors: int) -> np.ndarray:
    """Factors in FACTORS_SCHEMA (Spark's userFactors/itemFactors layout) as a float32 (n_rows, n_factors)
    array; rows without an id in ``table`` (Spark returns none for a user or item without ratings) stay 0."""
    ids = table.column("id").to_numpy()
    out = np.zeros((n_rows, n_factors), dtype=np.float32)
    if len(ids):
        if ids.min() < 0 or ids.max() >= n_rows:
            raise ValueError(f"factor ids must be in [0, {n_rows}), got {ids.min()}..{ids.max()}")
        out[ids] = list_matrix(table.column("features"), n_factors)
    return out


# ---------------------------------------------------------------------------------------------- top-N
def top_n_rows(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``n`` columns of each row, best first (ties: lower column first), as (ids, scores), padded with
    -1 / -inf where a row has fewer than ``n`` entries above -inf; NaN counts as -inf. The same selection as
    als_core.topk.top_n. Changes ``scores`` (NaN set to -inf)."""
    rows, width = scores.shape
    n = min(int(n), width)
    ids = np.full((rows, max(n, 0)), -1, dtype=np.int64)
    best = np.full((rows, max(n, 0)), -np.inf, dtype=scores.dtype)
    if n <= 0 or rows == 0:
        return ids, best
    scores[np.isnan(scores)] = -np.inf
    if n < width:
        picked = np.argpartition(scores, width - n, axis=1)[:, width - n:]
    else:
        picked = np.broadcast_to(np.arange(width), (rows, width)).copy()
    values = np.take_along_axis(scores, picked, axis=1)
    order = np.lexsort((picked, -values), axis=1)
    ids[:] = np.take_along_axis(picked, order, axis=1)
    best[:] = np.take_along_axis(values, order, axis=1)
    # argpartition breaks ties at the n-th score arbitrarily, and a row with fewer than n eligible items has
    # -inf among its picks: those rows are chosen again from every candidate, in (score, index) order
    last = best[:, -1]
    redo = (last == -np.inf) | ((scores >= last[:, None]).sum(axis=1) > n)
    for r in np.flatnonzero(redo):
        row = scores[r]
        candidates = np.flatnonzero(row >= last[r]) if last[r] > -np.inf else np.flatnonzero(row > -np.inf)
        candidates = candidates[np.lexsort((candidates, -row[candidates]))][:n]
        ids[r], best[r] = -1, -np.inf
        ids[r, :len(candidates)], best[r, :len(candidates)] = candidates, row[candidates]
    return ids, best


def score_batch(batch: pa.RecordBatch, items: np.ndarray, n: int) -> Iterator[pa.RecordBatch]:
    """STAGED_SCHEMA rows for a batch of users (`user` int, `features` list<float>, `seen` list<int> or null):
    each user's top-``n`` items by ``features @ items.T`` without its seen items."""
    n_items, n_factors = items.shape
    users = batch.column("user").to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    vectors = list_matrix(batch.column("features"), n_factors)
    seen = batch.column("seen")
    counts = pc.list_value_length(seen).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    seen_items = pc.list_flatten(seen).to_numpy(zero_copy_only=False).astype(np.int64)
    block = max(1, _SCORE_CELLS // max(n_items, 1))
    for lo in range(0, len(users), block):
        hi = min(lo + block, len(users))
        scores = vectors[lo:hi] @ items.T
        rows = np.repeat(np.arange(hi - lo), counts[lo:hi])
        scores[rows, seen_items[offsets[lo]:offsets[hi]]] = -np.inf
        ids, best = top_n_rows(scores, n)
        width = ids.shape[1]
        filled = (ids >= 0).ravel()
        columns = [np.repeat(users[lo:hi], width), np.tile(np.arange(1, width + 1, dtype=np.int32), hi - lo),
                   ids.astype(np.int32).ravel(), best.astype(np.float32).ravel()]
        yield pa.RecordBatch.from_arrays([column[filled] for column in columns], schema=STAGED_SCHEMA)


# ---------------------------------------------------------------------------------------------- session
def is_connect(master: str | None) -> bool:
    return bool(master) and master.startswith("sc://")


def default_conf(master: str | None) -> dict[str, str]:
    """Spark conf the job sets unless the spec's conf sets it: quiet (no console progress bars, WARN) and, for
    a master on this machine, a driver on the loopback interface without a UI (nobody watches a job's UI)."""
    if is_connect(master):
        return {}  # the server's conf is the server's; a client sets only SQL conf
    conf = {"spark.ui.showConsoleProgress": "false", "spark.log.level": "WARN"}
    if master and (master.startswith("local") or master.split("://")[-1].split(":")[0] in ("127.0.0.1",
                                                                                          "localhost")):
        conf.update({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
    if master and master.startswith("local"):
        conf["spark.ui.enabled"] = "false"
    return conf


def build_session(spec: dict):
    """The spec's SparkSession: Spark Connect for `sc://`, a master URL, or the platform's session."""
    from pyspark.sql import SparkSession

    master = spec.get("master") or None
    builder = SparkSession.builder.appName(spec.get("app_name") or "als-spark")
    if is_connect(master):
        builder = builder.remote(master)
    elif master:
        builder = builder.master(master)
    for key, value in {**default_conf(master), **(spec.get("conf") or {})}.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    if not is_connect(master):
        spark.sparkContext.setLogLevel("WARN")
        if spec.get("checkpoint_dir"):
            spark.sparkContext.setCheckpointDir(spec["checkpoint_dir"])
    return spark


def parallelism(spark) -> int | None:
    """Tasks the session runs at once (classic Spark: its default parallelism; Spark Connect: unknown)."""
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:  # Spark Connect has no SparkContext
        return None


def cluster_facts(spark, master: str | None) -> dict:
    """Spark version, master, executors and their cores, as the driver sees them (take it after the work:
    a standalone cluster's executors register while the first job starts). Spark Connect tells the client
    none of it but the version."""
    facts = {"spark_version": spark.version, "master": master, "executors": None, "executor_cores": None,
             "default_parallelism": parallelism(spark)}
    if is_connect(master):
        return facts
    sc = spark.sparkContext
    facts["master"] = sc.master
    jsc = sc._jsc.sc()
    total_cores = int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))
    if sc.master.startswith("local"):
        executors = 1  # the driver runs the tasks
    else:
        executors = max(0, len(jsc.statusTracker().getExecutorInfos()) - 1)  # the list includes the driver
    facts["executors"] = executors
    facts["executor_cores"] = total_cores // executors if executors else None
    facts["total_cores"] = total_cores
    return facts


# ---------------------------------------------------------------------------------------------- modes
def fit(spark, spec: dict, progress: Progress) -> dict:
    from pyspark.ml.recommendation import ALS

    started = time.perf_counter()
    coords = spark.read.parquet(spec["coords"]).cache()
    n_ratings = coords.count()
    seconds_read = time.perf_counter() - started
    progress(f"read {n_ratings} ratings in {seconds_read:.1f}s")

    params = dict(spec["params"])
    started = time.perf_counter()
    model = ALS(**params, userCol="user", itemCol="item", ratingCol="rating", coldStartStrategy="drop").fit(coords)
    seconds_fit = time.perf_counter() - started
    progress(f"fitted ALS (rank {params.get('rank')}, {params.get('maxIter')} iterations) in {seconds_fit:.1f}s")
    coords.unpersist()

    started = time.perf_counter()
    model.userFactors.write.mode("overwrite").parquet(spec["user_factors_out"])
    model.itemFactors.write.mode("overwrite").parquet(spec["item_factors_out"])
    seconds_write = time.perf_counter() - started
    progress(f"wrote the factors in {seconds_write:.1f}s")
    return {"n_ratings": int(n_ratings), "params": params, "seconds_read": seconds_read, "seconds_fit": seconds_fit,
            "seconds_write": seconds_write}


def score(spark, spec: dict, progress: Progress) -> dict:
    from pyspark.sql import functions as F

    n = int(spec["n"])
    started = time.perf_counter()
    item_table = spark.read.parquet(spec["item_factors"]).toArrow()
    n_factors = int(pc.max(pc.list_value_length(item_table.column("features"))).as_py() or 0)
    items = factors_array(item_table, int(spec["n_items"]), n_factors)
    factors = spark.read.parquet(spec["user_factors"])
    seen = spark.read.parquet(spec["seen"]).groupBy("user").agg(F.collect_list("item").alias("seen"))
    users = factors.join(seen, factors["id"] == seen["user"], "left").select(
        factors["id"].cast("int").alias("user"), "features", "seen")
    n_users = factors.count()
    partitions = max(parallelism(spark) or 2, math.ceil(n_users / _USERS_PER_PARTITION))
    users = users.repartition(partitions).cache()
    users.count()
    seconds_read = time.perf_counter() - started
    progress(f"read {n_users} users and {len(items)} items ({n_factors} factors) in {seconds_read:.1f}s")

    if is_connect(spec.get("master")):
        load_items = lambda: items  # noqa: E731  (Spark Connect has no broadcast: the array goes with the function)
    else:
        broadcast = spark.sparkContext.broadcast(items)
        load_items = lambda: broadcast.value  # noqa: E731

    def top_n(batches):
        item_factors = load_items()
        for batch in batches:
            yield from score_batch(batch, item_factors, n)

    started = time.perf_counter()
    users.mapInArrow(top_n, _STAGED_DDL).write.mode("overwrite").parquet(spec["staged_out"])
    seconds_score = time.perf_counter() - started
    users.unpersist()
    progress(f"scored the top {n} of {n_users} users in {seconds_score:.1f}s ({partitions} partitions)")
    return {"n_users": int(n_users), "n": n, "partitions": partitions, "seconds_read": seconds_read,
            "seconds_score": seconds_score}


MODES = {"fit": fit, "score": score}


def run(spec: dict, progress: Progress) -> dict:
    mode = spec["mode"]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    master = spec.get("master") or None
    started = time.perf_counter()
    spark = build_session(spec)
    try:
        seconds_session = time.perf_counter() - started
        progress(f"Spark {spark.version} session on {master or 'the platform master'} in {seconds_session:.1f}s")
        if not is_connect(master) and "spark.sql.shuffle.partitions" not in (spec.get("conf") or {}):
            # 200 shuffle partitions by default: tiny tasks on small data; a few per core is enough
            spark.conf.set("spark.sql.shuffle.partitions", str(max(2, 2 * (parallelism(spark) or 1))))
        result = MODES[mode](spark, spec, progress)
        return {"engine": "spark", "mode": mode, **cluster_facts(spark, master), "seconds_session": seconds_session,
                **result}
    finally:
        spark.stop()


# ---------------------------------------------------------------------------------------------- entry point
PIPES_TRANSPORTS = ("default", "dbfs", "s3")


def pipes_io(transport: str) -> dict:
    """The context loader and message writer of ``transport``: `default` is the one `PipesSubprocessClient`
    speaks (files and the environment); `dbfs` is Databricks' (`PipesDatabricksClient`); `s3` writes the messages
    to S3 (`PipesEMRClient` with a `PipesS3MessageReader`; needs boto3 on the cluster)."""
    import dagster_pipes

    if transport == "dbfs":
        return {"context_loader": dagster_pipes.PipesDbfsContextLoader(),
                "message_writer": dagster_pipes.PipesDbfsMessageWriter()}
    if transport == "s3":
        import boto3  # on EMR's images; a clear ImportError elsewhere

        return {"message_writer": dagster_pipes.PipesS3MessageWriter(client=boto3.client("s3"))}
    if transport == "default":
        return {}
    raise ValueError(f"--pipes-transport is one of {', '.join(PIPES_TRANSPORTS)}, got {transport!r}")


@contextlib.contextmanager
def _pipes(transport: str = "default") -> Iterator[object | None]:
    """Dagster Pipes' context when a Pipes client started this process (its parameters in the environment, as
    PipesSubprocessClient passes them, or on the command line, as spark-submit based clients may) and
    dagster_pipes is installed; else None. ``transport``: how context and messages travel (`pipes_io`)."""
    try:
        from dagster_pipes import PipesCliArgsParamsLoader, PipesEnvVarParamsLoader, open_dagster_pipes
    except ImportError:
        yield None
        return
    loader = next((loader for loader in (PipesEnvVarParamsLoader(), PipesCliArgsParamsLoader())
                   if loader.is_dagster_pipes_process()), None)
    if loader is None:
        yield None
        return
    with open_dagster_pipes(params_loader=loader, **pipes_io(transport)) as pipes:
        yield pipes


def _redirect_output(path: str) -> None:
    """This process's stdout and stderr, and so the JVM's it starts, into ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _write_report(path: str | None, report: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="the job's spec (JSON file)")
    parser.add_argument("--pipes-transport", choices=PIPES_TRANSPORTS, default="default",
                        help="how Dagster Pipes' context and messages travel: default (PipesSubprocessClient), "
                             "dbfs (PipesDatabricksClient), s3 (PipesEMRClient with an S3 message reader)")
    args, _ = parser.parse_known_args(argv)  # a Pipes client may add its own arguments
    spec = json.loads(Path(args.spec).read_text())
    if spec.get("log_out"):
        _redirect_output(spec["log_out"])
    with _pipes(args.pipes_transport) as pipes:
        def progress(message: str) -> None:
            print(f"{time.strftime('%H:%M:%S')} als_spark: {message}", file=sys.stderr, flush=True)
            if pipes is not None:
                pipes.log.info(message)

        try:
            report = run(spec, progress)
        except BaseException as error:
            _write_report(spec.get("report_out"), {"engine": "spark", "mode": spec.get("mode"),
                                                   "error": "".join(traceback.format_exception_only(error)).strip(),
                                                   "traceback": traceback.format_exc()})
            raise
        _write_report(spec.get("report_out"), report)
        if pipes is not None:
            pipes.report_custom_message(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
