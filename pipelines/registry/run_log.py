"""The MLflow runs of training: the experiment, a run's params, loss curve, metrics and holdout, the
descriptions an operator reads first, and closing the runs a dead Dagster run left RUNNING."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from als_store.mlflow_store import is_remote, mlflow_errors
from als_store.model_tags import HOLDOUT_ARTIFACT_PATH, METRIC_TRAIN_LOSS, TAG_CLOSED_BY, TAG_DAGSTER_RUN_ID

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_EXPERIMENT = "als-recommender"
# an MLflow run still RUNNING whose Dagster run this instance does not know is closed after this long
ABANDONED_RUN_AGE_S = 24 * 3600.0


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Experiment id for ``name``, created on first use.

    Local stores get an explicit artifact location under the pipeline home (MLflow's default is ./mlruns
    relative to the cwd); a tracking server decides its own (proxied ``mlflow-artifacts:/``).
    """
    with mlflow_errors(f"looking up experiment {name!r}"):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if artifact_root is not None and not is_remote(client.tracking_uri):
            location = (Path(artifact_root).absolute() / name).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:
            # another process created it between our lookup and create
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


def start_training_run(
    client: MlflowClient, experiment_id: str, run_name: str, tags: Mapping[str, str]
) -> str:
    with mlflow_errors("creating the training run"):
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    return run.info.run_id


def log_training(
    client: MlflowClient,
    run_id: str,
    params: Mapping[str, Any],
    loss_history: Sequence[float],
    fit_seconds: float,
    sizes: Mapping[str, int],
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Params, the loss per iteration as a metric history, fit time, data sizes and any other ``metrics`` and
    ``tags``: one run, few requests."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    # steps count iterations from 1, as the loss picture and the step's log lines do
    metric_list = [Metric(METRIC_TRAIN_LOSS, float(v), now, step) for step, v in enumerate(loss_history, start=1)]
    metric_list.append(Metric("fit_seconds", float(fit_seconds), now, 0))
    metric_list += [Metric(f"data_{key}", float(value), now, 0) for key, value in sizes.items()]
    metric_list += [Metric(key, float(value), now, 0) for key, value in (metrics or {}).items()]
    param_list = [Param(str(key), str(value)) for key, value in params.items()]
    tag_list = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
    with mlflow_errors("logging the training run"):
        client.log_batch(run_id, params=param_list, tags=tag_list)
        for start in range(0, len(metric_list), 1000):  # log_batch takes at most 1000 metrics per request
            client.log_batch(run_id, metrics=metric_list[start:start + 1000])


def log_metrics(client: MlflowClient, run_id: str, values: Mapping[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, 0) for key, value in values.items()]
    with mlflow_errors("logging metrics"):
        client.log_batch(run_id, metrics=metrics)


def run_metrics(client: MlflowClient, run_id: str | None) -> dict[str, float]:
    """The run's latest metric values ({} without a run)."""
    if not run_id:
        return {}
    with mlflow_errors(f"reading the metrics of run {run_id}"):
        return client.get_run(run_id).data.metrics


def finish_run(client: MlflowClient, run_id: str, failed: bool = False) -> None:
    with mlflow_errors("closing the training run"):
        client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def log_holdout(client: MlflowClient, run_id: str, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
    """Keep the exact holdout pairs with the run: promotion may re-score another champion on them later."""
    user_ids, item_ids = np.asarray(user_ids), np.asarray(item_ids)
    # Integer ids are stored as they are (200k pairs: 3 MB in 0.01 s; zlib took 0.34 s for 1 MB). Text ids
    # are numpy unicode, 4 bytes per character padded to the longest id: compressed (32 MB -> 2 MB).
    integers = user_ids.dtype.kind in "iu" and item_ids.dtype.kind in "iu"
    save = np.savez if integers else np.savez_compressed
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(HOLDOUT_ARTIFACT_PATH).name
        save(path, user_ids=user_ids, item_ids=item_ids)
        with mlflow_errors("logging the holdout"):
            client.log_artifact(run_id, str(path), artifact_path=str(Path(HOLDOUT_ARTIFACT_PATH).parent))


def load_holdout(client: MlflowClient, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        with mlflow_errors(f"downloading the holdout of run {run_id}"):
            local = client.download_artifacts(run_id, HOLDOUT_ARTIFACT_PATH, tmp)
        with np.load(local, allow_pickle=False) as npz:
            return npz["user_ids"], npz["item_ids"]


def set_descriptions(client: MlflowClient, name: str, version: int, run_id: str | None, text: str) -> None:
    """The few numbers an operator watches, where MLflow shows them first: the run's description (top of the
    run page) and the model version's description (top of the version page)."""
    with mlflow_errors("writing the run and version descriptions"):
        if run_id:
            client.set_tag(run_id, "mlflow.note.content", text)
        client.update_model_version(name, str(version), description=text)


def close_abandoned_runs(client: MlflowClient, experiment_id: str, dagster_run_alive: Callable[[str], bool | None],
                         current_dagster_run_id: str) -> list[str]:
    """Mark KILLED the runs of the experiment still RUNNING although the Dagster run that opened them is over
    (a killed process, or a failure while MLflow was down, cannot close its own run). ``dagster_run_alive``
    says whether a Dagster run is still going (None: this instance does not know it; such a run is closed
    once it is ABANDONED_RUN_AGE_S old). Returns the closed MLflow run ids."""
    from mlflow.entities import ViewType

    with mlflow_errors("looking for training runs left RUNNING"):
        runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
    closed = []
    now_ms = time.time() * 1000
    for run in runs:
        owner = run.data.tags.get(TAG_DAGSTER_RUN_ID)
        if not owner or owner == current_dagster_run_id:
            continue
        alive = dagster_run_alive(owner)
        if alive is None:
            alive = now_ms - (run.info.start_time or 0) < ABANDONED_RUN_AGE_S * 1000
        if alive:
            continue
        with mlflow_errors(f"closing run {run.info.run_id} left RUNNING by Dagster run {owner}"):
            client.set_tag(run.info.run_id, TAG_CLOSED_BY, current_dagster_run_id)
            client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed
