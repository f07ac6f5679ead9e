"""The names the model registry is written and read by: aliases, model kinds, artifact names, run and version
tag keys. Writers (the pipeline) and readers (the pipeline, `pipelines status`, the API) import them from here
so they cannot drift apart; docs/registry.md has the table of what each tag means.

Imports nothing heavy: `pipelines/mlflow_model.py`, which MLflow's loader executes on its own, reads its
artifact key and default ``n`` from here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous_champion"

# which kind of model a version (and its run) is; a version without it is ALS, the default kind
TAG_MODEL_KIND = "model_kind"
KIND_ALS = "als"  # = als_core.bundle.KIND_ALS (not imported: it pulls numba into every CLI start)
KIND_POPULARITY = "popularity"

# the registered pyfunc: its logged name, the artifact holding the ModelBundle directory, its `n` param default
MODEL_ARTIFACT_NAME = "model"
BUNDLE_ARTIFACT_KEY = "bundle"
DEFAULT_N = 10
# the holdout pairs a challenger was judged on, an artifact of its MLflow run
HOLDOUT_ARTIFACT_PATH = "holdout/holdout.npz"

# the gate decides on this metric; the `*_ndcg_at_10` tags below carry it
GATE_METRIC = "ndcg@10"


def metric_name(key: str) -> str:
    """An MLflow metric or tag name for a metric key: MLflow allows no '@' (``ndcg@10`` -> ``ndcg_at_10``)."""
    return key.replace("@", "_at_")


TAG_EVAL_PREFIX = "eval."
TAG_GATE_PREFIX = "gate."


def eval_ndcg_tag(role: str) -> str:
    """``eval.<role>_ndcg_at_10``: the evaluation's NDCG@10 of ``role`` (challenger, champion, popularity)."""
    return f"{TAG_EVAL_PREFIX}{role}_{metric_name(GATE_METRIC)}"


def gate_ndcg_tag(role: str) -> str:
    """``gate.<role>_ndcg_at_10``: the NDCG@10 of ``role`` the gate's decision used."""
    return f"{TAG_GATE_PREFIX}{role}_{metric_name(GATE_METRIC)}"


# on a challenger's run: which engine trained it (`numba`: als_core here; `spark`: Spark's MLlib ALS), the
# als_core objective of its final factors (one number across engines), and, for Spark, where and how long
PARAM_ENGINE = "engine"
METRIC_FINAL_OBJECTIVE = "final_objective"
METRIC_TRAIN_LOSS = "train_loss"  # per iteration, numba only: Spark's ALS reports no loss while it fits
TAG_TRAIN_LOSS = "train_loss_per_iteration"  # on a run without per-iteration loss: why
PARAM_SPARK_VERSION = "spark_version"
PARAM_SPARK_MASTER = "spark_master"
PARAM_SPARK_EXECUTORS = "spark_executors"
PARAM_SPARK_EXECUTOR_CORES = "spark_executor_cores"
METRIC_SECONDS_MOVING_DATA = "seconds_moving_data"
METRIC_SECONDS_FITTING = "seconds_fitting"

# on runs and versions
TAG_DAGSTER_RUN_ID = "dagster_run_id"
TAG_HOLDOUT_FINGERPRINT = "holdout_fingerprint"
# set on an MLflow run a dead Dagster run left RUNNING, by the challenger that closed it
TAG_CLOSED_BY = "closed_by_dagster_run_id"

# written by the evaluation
TAG_EVAL_CHALLENGER_NDCG = eval_ndcg_tag("challenger")
TAG_EVAL_POPULARITY_NDCG = eval_ndcg_tag("popularity")
TAG_EVAL_CHAMPION_NDCG = eval_ndcg_tag("champion")
TAG_EVAL_CHAMPION_VERSION = f"{TAG_EVAL_PREFIX}champion_version"
# the champion the evaluation could not load or score, and why (empty: it was scored, or there was none)
TAG_EVAL_CHAMPION_LOAD_ERROR = f"{TAG_EVAL_PREFIX}champion_load_error"
TAG_EVAL_DAGSTER_RUN_ID = f"{TAG_EVAL_PREFIX}dagster_run_id"
# list stability: the challenger's top-10 against the champion's for the same (holdout) users; empty when there
# was no champion to compare with. MLflow metrics of the challenger's run too, as eval_<name>
STABILITY_JACCARD = "list_jaccard_at_10"  # mean Jaccard overlap of the two top-10 item sets
STABILITY_FIRST_CHANGED = "first_item_changed_share"  # share of the users whose first item differs
TAG_EVAL_LIST_JACCARD = f"{TAG_EVAL_PREFIX}{STABILITY_JACCARD}"
TAG_EVAL_FIRST_ITEM_CHANGED = f"{TAG_EVAL_PREFIX}{STABILITY_FIRST_CHANGED}"

# written by the gate
TAG_GATE_DECISION = f"{TAG_GATE_PREFIX}decision"
TAG_GATE_RULE = f"{TAG_GATE_PREFIX}rule"  # one of pipelines.registry.gate.RULES: which comparison decided
TAG_GATE_REASON = f"{TAG_GATE_PREFIX}reason"
TAG_GATE_MARGIN = f"{TAG_GATE_PREFIX}margin"
TAG_GATE_CHALLENGER_NDCG = gate_ndcg_tag("challenger")
TAG_GATE_CHAMPION_NDCG = gate_ndcg_tag("champion")
TAG_GATE_POPULARITY_NDCG = gate_ndcg_tag("popularity")
TAG_GATE_CHAMPION_VERSION = f"{TAG_GATE_PREFIX}champion_version"
TAG_GATE_CHAMPION_LOAD_ERROR = f"{TAG_GATE_PREFIX}champion_load_error"
TAG_GATE_DAGSTER_RUN_ID = f"{TAG_GATE_PREFIX}dagster_run_id"
TAG_GATE_HOLDOUT_FINGERPRINT = f"{TAG_GATE_PREFIX}holdout_fingerprint"
TAG_GATE_DECIDED_AT = f"{TAG_GATE_PREFIX}decided_at"
TAG_GATE_ROLLED_BACK_AT = f"{TAG_GATE_PREFIX}rolled_back_at"  # on the version a rollback demoted
# on an ALS challenger the gate rejected for popularity: the popularity version it registered and promoted
TAG_GATE_POPULARITY_VERSION = f"{TAG_GATE_PREFIX}popularity_version"
# on a popularity version: the ALS challenger it was compared with, and that one's NDCG@10
TAG_GATE_ALS_VERSION = f"{TAG_GATE_PREFIX}als_version"
TAG_GATE_ALS_NDCG = gate_ndcg_tag("als")
# on a popularity version: the ALS challenger whose training data it was counted on and whose holdout measured it
TAG_POPULARITY_OF = "popularity_of_version"

# a promotion by hand (`python -m pipelines registry promote`), on the version it made champion
TAG_MANUAL_PROMOTED_BY = "manual.promoted_by"
TAG_MANUAL_PROMOTED_AT = "manual.promoted_at"
TAG_MANUAL_REASON = "manual.reason"
TAG_MANUAL_REPLACED = "manual.replaced_champion"


def tag_float(value: Any, finite: bool = False) -> float | None:
    """A tag (or metadata) value as a float: None when it is missing, empty or not a number, and with
    ``finite`` also when it is NaN or infinite (JSON has neither). The gate's tags keep NaN: it never wins."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if finite and not math.isfinite(number) else number


def first_tag_float(tags: Mapping[str, str], keys: Iterable[str], finite: bool = False) -> float | None:
    """The number in the first of ``keys`` whose tag holds one (`tag_float`), or None."""
    return next((v for v in (tag_float(tags.get(key), finite) for key in keys) if v is not None), None)


def kind_of(tags: Mapping[str, str] | None) -> str:
    """The model kind a version's tags say (ALS when they say none)."""
    return (tags or {}).get(TAG_MODEL_KIND) or KIND_ALS
