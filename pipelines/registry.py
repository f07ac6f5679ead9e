"""The MLflow side of the pipeline: training runs, registered versions, the champion gate and rollback.

No Dagster import: the serving API reuses the read side (`champion_ref`, `download_bundle`,
`load_champion_bundle`). Every function takes an explicit tracking URI or client; nothing relies on MLflow's
process-global default store (a relative ``sqlite:///mlflow.db`` in whatever directory the process runs in).

Layout (docs/registry.md has the full list):
- one experiment (default "als-recommender"), one run per training;
- the model is a "models from code" pyfunc (`pipelines/mlflow_model.py`) whose artifact ``bundle`` is the
  `als_core.bundle.ModelBundle` directory (arrays + JSON), registered as a new version of the model name;
- the holdout the run was judged on is an artifact of the run (``holdout/holdout.npz``), so a promotion can
  re-score a changed champion on exactly the same pairs;
- aliases ``champion`` and ``previous_champion``; the gate's decision and scores are version tags;
- two kinds of version (tag ``model_kind``): ``als`` (a trained challenger) and ``popularity`` (the baseline
  the evaluation measured, registered by the gate when it is the one promoted); aliases, tags, rollback and
  serving treat both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import getpass
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

if TYPE_CHECKING:  # heavy imports stay lazy: `python -m pipelines.registry` and serving start faster
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from als_core.bundle import ModelBundle

CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous_champion"
BUNDLE_ARTIFACT_KEY = "bundle"
MODEL_ARTIFACT_NAME = "model"
HOLDOUT_ARTIFACT_PATH = "holdout/holdout.npz"
MODEL_CODE_PATH = Path(__file__).with_name("mlflow_model.py")
DEFAULT_EXPERIMENT = "als-recommender"
DEFAULT_N = 10

# Version / run tag keys. Kept here so writers and readers cannot drift apart.
TAG_DAGSTER_RUN_ID = "dagster_run_id"
TAG_HOLDOUT_FINGERPRINT = "holdout_fingerprint"
TAG_EVAL_PREFIX = "eval."
TAG_GATE_PREFIX = "gate."
TAG_EVAL_CHAMPION_VERSION = "eval.champion_version"
TAG_EVAL_CHAMPION_NDCG = "eval.champion_ndcg_at_10"
# the champion the evaluation could not load or score, and why (empty: it was scored, or there was none)
TAG_EVAL_CHAMPION_LOAD_ERROR = "eval.champion_load_error"
TAG_GATE_DECISION = "gate.decision"
TAG_GATE_RULE = "gate.rule"  # one of RULES: which comparison decided
TAG_GATE_CHAMPION_LOAD_ERROR = "gate.champion_load_error"
# a promotion by hand (`python -m pipelines registry promote`), on the version it made champion
TAG_MANUAL_PROMOTED_BY = "manual.promoted_by"
TAG_MANUAL_PROMOTED_AT = "manual.promoted_at"
TAG_MANUAL_REASON = "manual.reason"
TAG_MANUAL_REPLACED = "manual.replaced_champion"
# set on an MLflow run a dead Dagster run left RUNNING, by the challenger that closed it
TAG_CLOSED_BY = "closed_by_dagster_run_id"
# which kind of model a version (and its run) is: KIND_ALS or KIND_POPULARITY; absent on versions from before
# kinds existed, which are ALS
TAG_MODEL_KIND = "model_kind"
KIND_ALS = "als"  # = als_core.bundle.KIND_ALS (not imported: it pulls numba into every CLI start)
KIND_POPULARITY = "popularity"
# on a popularity version: the ALS challenger whose training data it was counted on and whose holdout measured it
TAG_POPULARITY_OF = "popularity_of_version"
# on an ALS challenger the gate rejected for popularity: the popularity version it registered and promoted
TAG_GATE_POPULARITY_VERSION = "gate.popularity_version"
# on a popularity version: the ALS challenger it was compared with, and that one's NDCG@10
TAG_GATE_ALS_VERSION = "gate.als_version"
TAG_GATE_ALS_NDCG = "gate.als_ndcg_at_10"

RULE_FIRST_MODEL = "first_model"  # no champion: beat popularity
RULE_BEATS_CHAMPION = "beats_champion"  # beat the champion by more than the margin, and popularity
RULE_CHAMPION_UNSCORABLE = "champion_unscorable"  # the champion could not be loaded or scored: beat popularity
RULE_ALREADY_CHAMPION = "already_champion"
# The rules under which the gate promotes popularity (counted on the challenger's training data) instead:
RULE_POPULARITY_FIRST_MODEL = "popularity_first_model"  # no champion, and the challenger did not beat popularity
RULE_POPULARITY_BEATS_CHAMPION = "popularity_beats_champion"  # an ALS champion below popularity by the margin,
#                                                                and the challenger did not win
RULE_POPULARITY_CHAMPION_UNSCORABLE = "popularity_champion_unscorable"  # unscorable champion, challenger lost
RULE_POPULARITY_REFRESH = "popularity_refresh"  # a popularity champion the challenger did not beat: fresh counts
POPULARITY_RULES = (RULE_POPULARITY_FIRST_MODEL, RULE_POPULARITY_BEATS_CHAMPION, RULE_POPULARITY_CHAMPION_UNSCORABLE,
                    RULE_POPULARITY_REFRESH)
RULES = (RULE_FIRST_MODEL, RULE_BEATS_CHAMPION, RULE_CHAMPION_UNSCORABLE, RULE_ALREADY_CHAMPION, *POPULARITY_RULES)

REACHABILITY_TIMEOUT_S = 5.0
LOCK_TIMEOUT_S = 600.0
# an MLflow run still RUNNING whose Dagster run this instance does not know is closed after this long
ABANDONED_RUN_AGE_S = 24 * 3600.0

# mlflow.pyfunc.log_model only talks to the process-global tracking URI; this lock keeps our own callers
# from switching it under each other.
_GLOBAL_URI_LOCK = threading.RLock()


class RegistryError(RuntimeError):
    """The registry is not in the state an operation needs (no champion to roll back to, ...)."""


class MlflowUnavailable(RegistryError):
    """MLflow could not be reached, or failed, while the pipeline needed it."""


class BundleUnloadable(RegistryError):
    """A registered version whose model cannot be loaded (its files gone or broken) while MLflow answers."""

    def __init__(self, name: str, version: int, cause: str):
        super().__init__(f"{name} version {version} cannot be loaded: {cause}")
        self.name, self.version, self.cause = name, int(version), cause


# MLflow's defaults (7 retries with exponential backoff, 120 s per request) hold a step for minutes against a
# dead tracking server. A variable the environment sets already wins.
MLFLOW_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": 2, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 1,
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": 15}

# --------------------------------------------------------------------------------------------- connection


def bound_mlflow_http(limits: Mapping[str, int] = MLFLOW_HTTP_LIMITS) -> dict[str, str]:
    """Set the MLflow HTTP retry and timeout variables the environment leaves unset (MLflow reads them on
    every request). Returns what it set, for `unbound_mlflow_http`."""
    applied = {}
    for key, value in limits.items():
        if key not in os.environ:
            os.environ[key] = applied[key] = str(value)
    return applied


def unbound_mlflow_http(applied: Mapping[str, str]) -> None:
    for key, value in applied.items():
        if os.environ.get(key) == value:
            del os.environ[key]


def validate_tracking_uri(tracking_uri: str) -> str:
    """Refuse relative stores: a relative sqlite path silently creates a new, empty registry per cwd."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        path = tracking_uri[len("sqlite:///"):]
        if not tracking_uri.startswith("sqlite:///") or not path.startswith("/"):
            raise ValueError(f"MLflow tracking URI must be absolute (sqlite:////abs/path.db): {tracking_uri!r}")
    elif parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme else tracking_uri
        if not os.path.isabs(path):
            raise ValueError(f"MLflow tracking URI must be an absolute path: {tracking_uri!r}")
    return tracking_uri


def is_remote(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in ("http", "https")


def sqlite_path(tracking_uri: str) -> Path | None:
    if urlparse(tracking_uri).scheme != "sqlite":
        return None
    return Path(tracking_uri[len("sqlite:///"):])


def check_reachable(tracking_uri: str, timeout_s: float = REACHABILITY_TIMEOUT_S) -> None:
    """Fail fast with a clear message instead of MLflow's minutes of HTTP retries on a dead server."""
    validate_tracking_uri(tracking_uri)
    if is_remote(tracking_uri):
        import httpx

        url = tracking_uri.rstrip("/") + "/health"
        try:
            response = httpx.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise MlflowUnavailable(
                f"MLflow tracking server {tracking_uri} is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        if response.status_code != 200:
            raise MlflowUnavailable(
                f"MLflow tracking server {tracking_uri} is unhealthy: GET /health -> {response.status_code}"
            )
        return
    db_path = sqlite_path(tracking_uri)
    if db_path is not None:
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MlflowUnavailable(f"MLflow store {tracking_uri} is not writable: {exc}") from exc


def make_client(tracking_uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    validate_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextlib.contextmanager
def mlflow_errors(action: str) -> Iterator[None]:
    """Re-raise whatever MLflow or the network throws as MlflowUnavailable naming the step that failed."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except RegistryError:
        raise
    except (MlflowException, OSError, ConnectionError) as exc:
        raise MlflowUnavailable(f"MLflow failed while {action}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # requests' errors do not all derive from OSError
        if type(exc).__module__.startswith(("requests", "urllib3", "httpx")):
            raise MlflowUnavailable(f"MLflow failed while {action}: {type(exc).__name__}: {exc}") from exc
        raise


@contextlib.contextmanager
def using_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (log_model needs it) at ``tracking_uri`` for the block, then restore."""
    import mlflow

    with _GLOBAL_URI_LOCK:
        previous = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            yield
        finally:
            for key, value in zip(("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"), previous):
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])


# --------------------------------------------------------------------------------------------- training run


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
) -> None:
    """Params, the loss per iteration as a metric history, fit time and data sizes: one run, few requests."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    # steps count iterations from 1, as the loss picture and the step's log lines do
    metrics = [Metric("train_loss", float(v), now, step) for step, v in enumerate(loss_history, start=1)]
    metrics.append(Metric("fit_seconds", float(fit_seconds), now, 0))
    metrics += [Metric(f"data_{key}", float(value), now, 0) for key, value in sizes.items()]
    param_list = [Param(str(key), str(value)) for key, value in params.items()]
    with mlflow_errors("logging the training run"):
        client.log_batch(run_id, params=param_list)
        for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics per request
            client.log_batch(run_id, metrics=metrics[start:start + 1000])


def set_descriptions(client: MlflowClient, name: str, version: int, run_id: str | None, text: str) -> None:
    """The few numbers an operator watches, where MLflow shows them first: the run's description (top of the
    run page) and the model version's description (top of the version page)."""
    with mlflow_errors("writing the run and version descriptions"):
        if run_id:
            client.set_tag(run_id, "mlflow.note.content", text)
        client.update_model_version(name, str(version), description=text)


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


def log_metrics(client: MlflowClient, run_id: str, values: Mapping[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, 0) for key, value in values.items()]
    with mlflow_errors("logging metrics"):
        client.log_batch(run_id, metrics=metrics)


def finish_run(client: MlflowClient, run_id: str, failed: bool = False) -> None:
    with mlflow_errors("closing the training run"):
        client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def model_signature(id_dtype: np.dtype):
    """Input: one ``user_id`` column typed like the model's ids; params: ``n`` (without a params schema
    MLflow silently drops ``params={"n": ...}``). Output: one row per (user, rank)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    id_type = "long" if np.issubdtype(np.dtype(id_dtype), np.integer) else "string"
    return ModelSignature(
        inputs=Schema([ColSpec(id_type, "user_id")]),
        outputs=Schema([
            ColSpec(id_type, "user_id"),
            ColSpec("long", "rank"),
            ColSpec(id_type, "item_id"),
            ColSpec("double", "score"),
            ColSpec("string", "source"),
        ]),
        params=ParamSchema([ParamSpec("n", "long", DEFAULT_N)]),
    )


def _pip_requirements() -> list[str]:
    """Pinned to what is installed, instead of MLflow's inference (a subprocess that imports the model).
    `als_core` itself comes from this project (see docs/registry.md)."""
    pins = []
    for package in ("mlflow", "numpy", "scipy", "numba", "pandas"):
        try:
            pins.append(f"{package}=={importlib_metadata.version(package)}")
        except importlib_metadata.PackageNotFoundError:
            pins.append(package)
    return pins


@dataclass(frozen=True)
class VersionRef:
    """One registered model version; ``version`` normalised to int (sqlite gives int, REST gives str)."""

    name: str
    version: int
    run_id: str | None
    tags: Mapping[str, str]

    @classmethod
    def of(cls, mv: ModelVersion) -> VersionRef:
        return cls(name=mv.name, version=int(mv.version), run_id=mv.run_id, tags=dict(mv.tags or {}))

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def kind(self) -> str:
        return kind_of(self.tags)


def kind_of(tags: Mapping[str, str] | None) -> str:
    """The model kind a version's tags say (versions from before kinds existed are ALS)."""
    return (tags or {}).get(TAG_MODEL_KIND) or KIND_ALS


def register_bundle(
    tracking_uri: str,
    run_id: str,
    model_name: str,
    bundle_dir: Path,
    example_user_ids: np.ndarray,
    version_tags: Mapping[str, str],
) -> VersionRef:
    """Log the pyfunc (code file + bundle directory as artifact ``bundle``) into ``run_id`` and register it
    as a new version of ``model_name``.

    ``example_user_ids`` (a few ids the model knows) become the input example, and the logged model is loaded
    and asked for recommendations for them before it is registered: a version that cannot serve is never
    registered (MLflow's own input-example validation only logs a warning).
    """
    import mlflow

    example = _example_frame(example_user_ids)
    with mlflow_errors("logging and registering the model"), using_tracking_uri(tracking_uri):
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_NAME,
                python_model=str(MODEL_CODE_PATH),
                artifacts={BUNDLE_ARTIFACT_KEY: str(bundle_dir)},
                signature=model_signature(example["user_id"].dtype),
                input_example=example,
                pip_requirements=_pip_requirements(),
            )
        smoke_test(info.model_uri, example)
        mv = mlflow.register_model(info.model_uri, model_name, tags=dict(version_tags))
        return get_version(make_client(tracking_uri), model_name, mv.version)


def register_popularity(
    tracking_uri: str,
    experiment_id: str,
    model_name: str,
    challenger: VersionRef,
    bundle: ModelBundle,
    run_name: str,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
) -> VersionRef:
    """Register a popularity ``bundle`` (counted on ``challenger``'s training data) as a new version of
    ``model_name``: a run of its own (``run_name``; ``tags`` and ``metrics`` plus the kind and the challenger
    it was counted for), the same pyfunc and checks as an ALS version, tagged ``model_kind=popularity``."""
    client = make_client(tracking_uri)
    tags = {**tags, TAG_MODEL_KIND: KIND_POPULARITY, TAG_POPULARITY_OF: str(challenger.version)}
    run_id = start_training_run(client, experiment_id, run_name, tags)
    try:
        log_metrics(client, run_id, metrics)
        with tempfile.TemporaryDirectory(prefix="popularity-") as tmp:
            bundle_dir = bundle.save(Path(tmp) / "bundle")
            version = register_bundle(tracking_uri, run_id, model_name, bundle_dir, bundle.user_ids[:2], tags)
    except BaseException:
        with contextlib.suppress(Exception):
            finish_run(client, run_id, failed=True)
        raise
    finish_run(client, run_id)
    return version


def _example_frame(user_ids: np.ndarray):
    import pandas as pd

    return pd.DataFrame({"user_id": np.asarray(user_ids)})


def smoke_test(model_uri: str, example, n: int = 2) -> None:
    """Load the pyfunc as serving would and check it recommends, at most ``n`` items per user (a user who
    has seen nearly the whole catalogue may get fewer)."""
    import mlflow

    try:
        # suppress_warnings: no check of the model's pip requirements against this environment, which just
        # wrote them (it reads every installed package's metadata: about 0.6 s per load)
        out = mlflow.pyfunc.load_model(model_uri, suppress_warnings=True).predict(example, params={"n": n})
        counts = out.groupby("user_id").size()
        ok = len(out) > 0 and bool((counts <= n).all())
        problem = f"expected 1..{n} items per user for {len(example)} users, got {counts.to_dict()}"
    except Exception as exc:  # any failure here means the logged model cannot serve
        ok, problem = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        raise RegistryError(f"logged model {model_uri} failed its smoke test, not registered: {problem}")


def set_version_tags(client: MlflowClient, ref: VersionRef, tags: Mapping[str, Any]) -> None:
    with mlflow_errors(f"tagging {ref.name} version {ref.version}"):
        for key, value in tags.items():
            client.set_model_version_tag(ref.name, str(ref.version), key, "" if value is None else str(value))


def get_version(client: MlflowClient, name: str, version: int | str) -> VersionRef:
    with mlflow_errors(f"reading {name} version {version}"):
        return VersionRef.of(client.get_model_version(name, str(version)))


def find_version(client: MlflowClient, name: str, dagster_run_id: str | None = None) -> VersionRef:
    """The ALS challenger registered by ``dagster_run_id``; without one (an asset materialised on its own), or
    when that run registered none, the newest ALS version of ``name``. Popularity versions (which the gate
    registers, in the same run) are never a challenger."""
    _check_name(name)
    with mlflow_errors(f"searching versions of {name!r}"):
        if dagster_run_id:
            found = [mv for mv in client.search_model_versions(
                f"name = '{name}' AND tags.{TAG_DAGSTER_RUN_ID} = '{_quoted(dagster_run_id)}'"
            ) if kind_of(mv.tags) == KIND_ALS]
            if found:
                return VersionRef.of(max(found, key=lambda mv: int(mv.version)))
        page_token = None
        while True:  # newest first; popularity versions are a few among them
            page = client.search_model_versions(f"name = '{name}'", max_results=50,
                                                order_by=["version_number DESC"], page_token=page_token)
            newest = next((mv for mv in page if kind_of(mv.tags) == KIND_ALS), None)
            page_token = page.token
            if newest is not None or not page_token:
                break
    if newest is None:
        raise RegistryError(f"no registered ALS version of model {name!r}: materialise `challenger` first")
    return VersionRef.of(newest)


def _check_name(name: str) -> None:
    if "'" in name:
        raise ValueError(f"model names with quotes are not supported: {name!r}")


def _quoted(value: str) -> str:
    if "'" in value:
        raise ValueError(f"value with quotes cannot be used in an MLflow filter: {value!r}")
    return value


# --------------------------------------------------------------------------------------------- read side


def aliases(client: MlflowClient, name: str) -> dict[str, int]:
    """``{alias: version}``; empty when the model is not registered yet.

    Read from the registered model, never via get_model_version_by_alias, which raises
    INVALID_PARAMETER_VALUE for a missing alias.
    """
    from mlflow.exceptions import MlflowException

    with mlflow_errors(f"reading the aliases of {name!r}"):
        try:
            model = client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
    return {alias: int(version) for alias, version in (model.aliases or {}).items()}


def champion_ref(client: MlflowClient, name: str, alias: str = CHAMPION) -> VersionRef | None:
    """The version behind ``alias`` (pinned: serve this number, not the moving alias), or None."""
    version = aliases(client, name).get(alias)
    return None if version is None else get_version(client, name, version)


def download_bundle(tracking_uri: str, name: str, version: int, dst_dir: Path) -> Path:
    """Download version ``version`` of ``name`` into ``dst_dir``; return its bundle directory."""
    import mlflow.artifacts

    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    # models:/ URIs resolve through the global registry URI whatever download_artifacts is given
    with mlflow_errors(f"downloading {name} version {version}"), using_tracking_uri(tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{int(version)}", dst_path=str(dst_dir), tracking_uri=tracking_uri))
    return _bundle_dir(local, name, version)


def _bundle_dir(model_dir: Path, name: str, version: int) -> Path:
    """The bundle directory inside a logged model's directory (where its MLmodel says)."""
    from mlflow.models import Model

    if not (model_dir / "MLmodel").is_file():  # MLflow's own error names the temporary download directory
        raise RegistryError(f"{name} version {version} has no MLmodel file in its artifacts")
    pyfunc_conf = Model.load(str(model_dir / "MLmodel")).flavors["python_function"]
    bundle_dir = model_dir / pyfunc_conf["artifacts"][BUNDLE_ARTIFACT_KEY]["path"]
    if not bundle_dir.is_dir():
        raise RegistryError(f"{name} version {version} has no `{BUNDLE_ARTIFACT_KEY}` artifact directory")
    return bundle_dir


def local_model_dir(tracking_uri: str, name: str, version: int) -> Path | None:
    """The version's model directory when its artifacts are plain files on this machine (a local store, or a
    server whose artifact root is a local path), else None: then it has to be downloaded."""
    with mlflow_errors(f"locating {name} version {version}"):
        uri = make_client(tracking_uri).get_model_version_download_uri(name, str(int(version)))
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    path = Path(url2pathname(parsed.path))
    return path if (path / "MLmodel").is_file() else None


def load_bundle(tracking_uri: str, name: str, version: int, dst_dir: Path | None = None) -> ModelBundle:
    """The version's ModelBundle. Arrays are read into memory: a local store's files are read where they are
    (copying a bundle first took 0.07-0.18 s at 200k users), anything else through a temporary download."""
    from als_core.bundle import ModelBundle

    if dst_dir is not None:
        return ModelBundle.load(download_bundle(tracking_uri, name, version, dst_dir))
    local = local_model_dir(tracking_uri, name, version)
    if local is not None:
        return ModelBundle.load(_bundle_dir(local, name, version))
    with tempfile.TemporaryDirectory(prefix="als-bundle-") as tmp:
        return ModelBundle.load(download_bundle(tracking_uri, name, version, Path(tmp)))


def load_version_bundle(tracking_uri: str, name: str, version: int) -> ModelBundle:
    """`load_bundle`, with a version that cannot be loaded told apart from MLflow being down: raises
    BundleUnloadable (version, cause) when the store answers but the model does not load, MlflowUnavailable
    when the store itself does not answer."""
    try:
        return load_bundle(tracking_uri, name, version)
    except Exception as exc:
        check_reachable(tracking_uri)
        get_version(make_client(tracking_uri), name, version)  # MlflowUnavailable if MLflow is what failed
        raise BundleUnloadable(name, version, _load_failure(tracking_uri, name, version, exc)) from exc


def _load_failure(tracking_uri: str, name: str, version: int, exc: Exception) -> str:
    """Why a version did not load, in words: the missing directory of a local store rather than the temporary
    directory MLflow's download left empty."""
    cause = str(exc) if isinstance(exc, RegistryError) else f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(Exception):
        uri = make_client(tracking_uri).get_model_version_download_uri(name, str(int(version)))
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            return f"{cause} (artifacts: {uri})"
        path = Path(url2pathname(parsed.path))
        if not path.exists():
            return f"its model directory {path} is missing"
        if not (path / "MLmodel").is_file():
            return f"its model directory {path} has no MLmodel file"
    return cause


def load_champion_bundle(
    tracking_uri: str, name: str, dst_dir: Path | None = None
) -> tuple[VersionRef, ModelBundle] | None:
    """Resolve ``champion`` once to a version number and load that version's bundle; None if no champion."""
    ref = champion_ref(make_client(tracking_uri), name)
    if ref is None:
        return None
    return ref, load_bundle(tracking_uri, name, ref.version, dst_dir)


# --------------------------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for one ALS challenger. ``promote``: the challenger became champion;
    ``promote_popularity``: the popularity baseline measured on the same holdout did instead (registered as
    version ``popularity_version`` by `promote_if_better`); neither: the champion stays."""

    promote: bool
    reason: str
    challenger_version: int
    challenger_ndcg: float
    champion_version: int | None
    champion_ndcg: float | None
    popularity_ndcg: float
    margin: float
    rule: str = RULE_BEATS_CHAMPION
    champion_load_error: str | None = None
    promote_popularity: bool = False
    champion_kind: str | None = None
    popularity_version: int | None = None

    @property
    def changes_champion(self) -> bool:
        return self.promote or self.promote_popularity

    def _scores(self) -> dict[str, str]:
        return {
            f"{TAG_GATE_PREFIX}reason": self.reason,
            f"{TAG_GATE_PREFIX}champion_version": "" if self.champion_version is None else str(self.champion_version),
            f"{TAG_GATE_PREFIX}champion_ndcg_at_10": _fmt(self.champion_ndcg),
            f"{TAG_GATE_PREFIX}popularity_ndcg_at_10": _fmt(self.popularity_ndcg),
            f"{TAG_GATE_PREFIX}margin": _fmt(self.margin),
            TAG_GATE_CHAMPION_LOAD_ERROR: self.champion_load_error or "",
        }

    def tags(self) -> dict[str, str]:
        """The challenger version's tags (and asset metadata) describing the decision."""
        tags = {
            TAG_GATE_DECISION: "promoted" if self.promote else "rejected",
            TAG_GATE_RULE: self.rule,
            f"{TAG_GATE_PREFIX}challenger_ndcg_at_10": _fmt(self.challenger_ndcg),
            **self._scores(),
        }
        if self.popularity_version is not None:
            tags[TAG_GATE_POPULARITY_VERSION] = str(self.popularity_version)
        return tags

    def popularity_tags(self) -> dict[str, str]:
        """The promoted popularity version's tags: the same decision seen from it. Its own NDCG@10 is its
        `gate.challenger_ndcg_at_10` (it is the candidate that won), the ALS challenger's is `gate.als_*`."""
        return {
            TAG_GATE_DECISION: "promoted",
            TAG_GATE_RULE: self.rule,
            f"{TAG_GATE_PREFIX}challenger_ndcg_at_10": _fmt(self.popularity_ndcg),
            **self._scores(),
            TAG_GATE_ALS_VERSION: str(self.challenger_version),
            TAG_GATE_ALS_NDCG: _fmt(self.challenger_ndcg),
        }


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def decide(
    challenger_version: int,
    challenger_ndcg: float,
    champion_version: int | None,
    champion_ndcg: float | None,
    popularity_ndcg: float,
    margin: float = 0.0,
    champion_load_error: str | None = None,
    champion_kind: str | None = None,
    popularity_available: bool = False,
    champion_popularity_of: int | None = None,
) -> GateDecision:
    """The rule, always on the challenger's holdout. An ALS challenger is promoted only if it beats popularity,
    and

    - ``first_model`` (no champion): that is all;
    - ``beats_champion``: it must also beat the champion's NDCG@10 + margin (a tie keeps the champion),
      whatever the champion's kind;
    - ``champion_unscorable`` (the champion could not be loaded or scored): beating popularity is all it can
      be judged on, so a broken champion never blocks promotions, and never lets a weak model through.

    When the challenger is not promoted and ``popularity_available`` (the caller can register the popularity
    model counted on the challenger's training data), popularity is promoted instead where it is the best
    measured: with no champion (``popularity_first_model``), over an unscorable champion
    (``popularity_champion_unscorable``), over an ALS champion it beats by more than the margin
    (``popularity_beats_champion``), and over a popularity champion, whose counts it refreshes without a
    comparison (``popularity_refresh``). ``already_champion``: the challenger, or the popularity counted on
    its data (``champion_popularity_of``), is the champion already. NaN never wins."""
    common = dict(challenger_version=challenger_version, challenger_ndcg=challenger_ndcg,
                  champion_version=champion_version, champion_ndcg=champion_ndcg,
                  popularity_ndcg=popularity_ndcg, margin=margin, champion_load_error=champion_load_error,
                  champion_kind=champion_kind)
    if champion_version is None:
        rule = RULE_FIRST_MODEL
    elif champion_version == challenger_version or (
            champion_kind == KIND_POPULARITY and champion_popularity_of == challenger_version):
        rule = RULE_ALREADY_CHAMPION
    elif champion_ndcg is None or not math.isfinite(champion_ndcg):
        rule = RULE_CHAMPION_UNSCORABLE
    else:
        rule = RULE_BEATS_CHAMPION

    def keep(reason: str) -> GateDecision:
        return GateDecision(False, reason, rule=rule, **common)

    def popularity(popularity_rule: str, reason: str) -> GateDecision:
        return GateDecision(False, f"{reason}: popularity promoted", rule=popularity_rule, promote_popularity=True,
                            **common)

    if rule == RULE_ALREADY_CHAMPION:
        if champion_version == challenger_version:
            return keep("challenger is already the champion")
        return keep(f"champion v{champion_version} is the popularity counted on v{challenger_version}'s data already")
    popularity_ok = popularity_available and math.isfinite(popularity_ndcg)
    if not math.isfinite(challenger_ndcg):
        beats_popularity = False
        versus_popularity = f"challenger NDCG@10 is {challenger_ndcg}"
    else:
        beats_popularity = challenger_ndcg > popularity_ndcg
        versus_popularity = (f"challenger NDCG@10 {challenger_ndcg:.5f} {'>' if beats_popularity else '<='} "
                             f"popularity {popularity_ndcg:.5f}")
    if rule == RULE_FIRST_MODEL:
        if beats_popularity:
            return GateDecision(True, f"first model: {versus_popularity}", rule=rule, **common)
        if popularity_ok:
            return popularity(RULE_POPULARITY_FIRST_MODEL, f"first model: {versus_popularity}")
        return keep(f"first model: {versus_popularity}")
    if rule == RULE_CHAMPION_UNSCORABLE:
        cause = champion_load_error or f"NDCG@10 {champion_ndcg}"
        reason = f"champion v{champion_version} could not be scored ({cause}): {versus_popularity}"
        if beats_popularity:
            return GateDecision(True, reason, rule=rule, **common)
        if popularity_ok:
            return popularity(RULE_POPULARITY_CHAMPION_UNSCORABLE, reason)
        return keep(reason)
    what = "popularity champion" if champion_kind == KIND_POPULARITY else "champion"
    if math.isfinite(challenger_ndcg):
        beats_champion = challenger_ndcg > champion_ndcg + margin
        reason = (f"challenger NDCG@10 {challenger_ndcg:.5f} {'>' if beats_champion else '<='} {what} "
                  f"v{champion_version} {champion_ndcg:.5f} + margin {margin:g}")
    else:
        beats_champion, reason = False, versus_popularity
    if beats_champion and beats_popularity:
        return GateDecision(True, reason, rule=rule, **common)
    if beats_champion:
        reason += f", but {versus_popularity}"
    if popularity_ok and champion_kind == KIND_POPULARITY:
        return popularity(RULE_POPULARITY_REFRESH, f"{reason}; counted again on this training data")
    if popularity_ok and popularity_ndcg > champion_ndcg + margin:
        return popularity(RULE_POPULARITY_BEATS_CHAMPION,
                          f"{reason}; popularity {popularity_ndcg:.5f} > champion v{champion_version} "
                          f"{champion_ndcg:.5f} + margin {margin:g}")
    return keep(reason)


def lock_path_for(tracking_uri: str, fallback_dir: Path) -> Path:
    """The promotion lock lives next to a sqlite store (every writer of that file shares it); for a
    tracking server, in the pipeline home (shared by every process of this deployment)."""
    db_path = sqlite_path(tracking_uri)
    if db_path is not None:
        return db_path.with_name(db_path.name + ".promotion.lock")
    return Path(fallback_dir) / "promotion.lock"


@contextlib.contextmanager
def promotion_lock(path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive flock: serialises promotions across processes and threads (each call opens its own file
    description, so two threads of one process exclude each other too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(f"timed out after {timeout_s:.0f}s waiting for promotion lock {path}")
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def promote_if_better(
    client: MlflowClient,
    name: str,
    challenger_version: int,
    challenger_ndcg: float,
    popularity_ndcg: float,
    evaluated_champion: tuple[int | None, float | None],
    score_champion: Callable[[int], float],
    lock_path: Path,
    margin: float = 0.0,
    extra_tags: Mapping[str, str] | None = None,
    champion_load_error: str | None = None,
    register_popularity: Callable[[GateDecision], int] | None = None,
) -> GateDecision:
    """Move ``champion`` to the challenger if it wins; the replaced version becomes ``previous_champion``.

    Compare-and-set under an exclusive lock: the champion alias is re-read just before moving it, and if it
    changed since evaluation (another retrain promoted meanwhile) the new champion is re-scored with
    ``score_champion(version)`` on the challenger's holdout before deciding. So two racing retrains end with
    the better model as champion. The decision and scores become tags of the challenger version.

    ``champion_load_error``: why the evaluated champion could not be scored (its NDCG is then None);
    ``score_champion`` raises BundleUnloadable for a champion that cannot be loaded. Either way the
    `champion_unscorable` rule decides.

    ``register_popularity(decision) -> version``: registers the popularity model counted on the challenger's
    training data (the baseline scored as ``popularity_ndcg``). Given, the gate may promote popularity (see
    `decide`): it is registered only then, under the lock, so a retrain where it does not win adds nothing
    to the registry. The popularity version gets the decision's `popularity_tags`.
    """
    evaluated_version, evaluated_ndcg = evaluated_champion
    with promotion_lock(lock_path):
        current = aliases(client, name).get(CHAMPION)
        current_ref = None if current is None else get_version(client, name, current)
        champion_kind = None if current_ref is None else current_ref.kind
        popularity_of = None if current_ref is None else current_ref.tags.get(TAG_POPULARITY_OF)
        load_error = None
        if current is None or current == challenger_version:
            champion_ndcg = None
        elif current == evaluated_version:
            champion_ndcg, load_error = evaluated_ndcg, champion_load_error
        else:
            try:
                champion_ndcg = score_champion(current)
            except BundleUnloadable as exc:
                champion_ndcg, load_error = None, exc.cause
        decision = decide(challenger_version, challenger_ndcg, current, champion_ndcg, popularity_ndcg, margin,
                          champion_load_error=load_error, champion_kind=champion_kind,
                          popularity_available=register_popularity is not None,
                          champion_popularity_of=int(popularity_of) if popularity_of else None)
        promoted = challenger_version if decision.promote else None
        if decision.promote_popularity:
            promoted = int(register_popularity(decision))
            decision = dataclasses.replace(decision, popularity_version=promoted)
        if promoted is not None:
            moves = {CHAMPION: promoted} if current is None else {PREVIOUS_CHAMPION: current, CHAMPION: promoted}
            move_aliases(client, name, moves)
        decided = {f"{TAG_GATE_PREFIX}decided_at": _utc_now(), **(extra_tags or {})}
        set_version_tags(client, VersionRef(name, challenger_version, None, {}), {**decision.tags(), **decided})
        if decision.promote_popularity:
            set_version_tags(client, VersionRef(name, promoted, None, {}), {**decision.popularity_tags(), **decided})
    return decision


def move_aliases(client: MlflowClient, name: str, moves: Mapping[str, int]) -> None:
    """Set ``moves`` ({alias: version}, in order) as one step: if MLflow fails half-way, the aliases already
    moved are put back where they were (MLflow has no transaction across aliases). Call under the lock."""
    before = aliases(client, name)
    done: list[str] = []
    try:
        with mlflow_errors(f"moving the aliases of {name!r}"):
            for alias, version in moves.items():
                client.set_registered_model_alias(name, alias, str(int(version)))
                done.append(alias)
    except BaseException:
        with contextlib.suppress(Exception):
            for alias in reversed(done):
                if alias in before:
                    client.set_registered_model_alias(name, alias, str(before[alias]))
                else:
                    client.delete_registered_model_alias(name, alias)
        raise


def rollback(client: MlflowClient, name: str, lock_path: Path | None = None,
             check_loads: bool = True) -> tuple[int, int]:
    """Point ``champion`` back at ``previous_champion``; the demoted version becomes ``previous_champion``,
    so a second rollback undoes the first. Returns (demoted version, restored version). Refuses (nothing
    changed) when there is no ``previous_champion``, it is the champion itself, or (``check_loads``) its
    bundle does not load."""
    lock = promotion_lock(lock_path) if lock_path is not None else contextlib.nullcontext()
    with lock:
        current = aliases(client, name)
        if PREVIOUS_CHAMPION not in current:
            raise RegistryError(f"model {name!r} has no `{PREVIOUS_CHAMPION}` alias: nothing to roll back to")
        restored = current[PREVIOUS_CHAMPION]
        demoted = current.get(CHAMPION)
        if demoted == restored:
            raise RegistryError(f"model {name!r}: `{PREVIOUS_CHAMPION}` is the champion itself (v{restored}): "
                                f"nothing to roll back to")
        if check_loads:
            try:
                load_version_bundle(client.tracking_uri, name, restored)
            except BundleUnloadable as exc:
                raise RegistryError(f"`{PREVIOUS_CHAMPION}`: {exc}: nothing changed; make a version that loads the "
                                    f"champion with `.venv/bin/python -m pipelines registry promote VERSION`") from exc
        if demoted is None:
            move_aliases(client, name, {CHAMPION: restored})
        else:
            move_aliases(client, name, {PREVIOUS_CHAMPION: demoted, CHAMPION: restored})
            with mlflow_errors(f"tagging {name} version {demoted}"):
                client.set_model_version_tag(name, str(demoted), f"{TAG_GATE_PREFIX}rolled_back_at", _utc_now())
    return (demoted if demoted is not None else restored), restored


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def operator_name() -> str:
    """Who runs this command: the login name (getpass: $LOGNAME, $USER, ..., then the password database)."""
    try:
        return getpass.getuser()
    except Exception:  # no such variable and no passwd entry (a bare container)
        return os.environ.get("USER") or "unknown"


def _model_version_or_none(client: MlflowClient, name: str, version: int):
    from mlflow.exceptions import MlflowException

    with mlflow_errors(f"reading {name} version {version}"):
        try:
            return client.get_model_version(name, str(int(version)))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise


class AlreadyChampion(RegistryError):
    """A promotion by hand of the version that is the champion already: nothing to do, nothing done."""


def promote_by_hand(tracking_uri: str, name: str, version: int, lock_path: Path, who: str,
                    reason: str | None = None) -> int | None:
    """Make ``version`` the champion by an operator's decision, with the bookkeeping the gate keeps: the old
    champion becomes ``previous_champion``, both aliases move under the promotion lock in one step, and the
    version's tags record who, when, why and which champion it replaced. Returns the replaced champion (None
    if there was none).

    Refuses with RegistryError, the registry left exactly as it was, when the version does not exist, is not
    READY or its bundle does not load. A version that is the champion already is left as it is (nothing
    moved, no tags): AlreadyChampion."""
    client = make_client(tracking_uri)
    mv = _model_version_or_none(client, name, version)
    if mv is None:
        raise RegistryError(f"model {name!r} has no version {version}: nothing changed")
    if mv.status != "READY":
        raise RegistryError(f"{name} version {version} is {mv.status}, not READY: nothing changed")
    try:
        load_version_bundle(tracking_uri, name, version)
    except BundleUnloadable as exc:
        raise RegistryError(f"{exc}: nothing changed") from exc
    with promotion_lock(lock_path):
        replaced = aliases(client, name).get(CHAMPION)
        if replaced == int(version):
            raise AlreadyChampion(f"{name} version {version} is already the champion: nothing changed")
        moves = {CHAMPION: version} if replaced is None else {PREVIOUS_CHAMPION: replaced, CHAMPION: version}
        move_aliases(client, name, moves)
        set_version_tags(client, VersionRef(name, int(version), None, {}), {
            TAG_MANUAL_PROMOTED_BY: who, TAG_MANUAL_PROMOTED_AT: _utc_now(), TAG_MANUAL_REASON: reason or "",
            TAG_MANUAL_REPLACED: "" if replaced is None else str(replaced)})
    return replaced


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


# --------------------------------------------------------------------------------------------- CLI


def _float_tag(tags: Mapping[str, str], key: str) -> float | None:
    value = tags.get(key) or ""
    return float(value) if value else None


def _version_entry(mv, aliases_of: Mapping[int, list[str]]) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    gate = {key[len(TAG_GATE_PREFIX):]: value for key, value in tags.items() if key.startswith(TAG_GATE_PREFIX)}
    ndcg = _float_tag(tags, f"{TAG_GATE_PREFIX}challenger_ndcg_at_10")
    entry = {
        "version": int(mv.version),
        "kind": kind_of(tags),
        "aliases": aliases_of.get(int(mv.version), []),
        "status": mv.status,
        "run_id": mv.run_id,
        "ndcg_at_10": ndcg if ndcg is not None else _float_tag(tags, "eval.challenger_ndcg_at_10"),
        "popularity_ndcg_at_10": next((v for v in (_float_tag(tags, "eval.popularity_ndcg_at_10"),
                                                   _float_tag(tags, f"{TAG_GATE_PREFIX}popularity_ndcg_at_10"))
                                       if v is not None), None),
        "decision": gate.get("decision"),  # None: never gated
        "rule": gate.get("rule"),
        "compared_with_version": int(gate["champion_version"]) if gate.get("champion_version") else None,
        "champion_ndcg_at_10": _float_tag(tags, f"{TAG_GATE_PREFIX}champion_ndcg_at_10"),
        "champion_load_error": gate.get("champion_load_error") or tags.get(TAG_EVAL_CHAMPION_LOAD_ERROR) or None,
        "decided_at": gate.get("decided_at"),
    }
    if tags.get(TAG_POPULARITY_OF):  # a popularity version: the ALS challenger it was counted for and beat
        entry["popularity_of_version"] = int(tags[TAG_POPULARITY_OF])
        entry["als_ndcg_at_10"] = _float_tag(tags, TAG_GATE_ALS_NDCG)
    elif tags.get(TAG_GATE_POPULARITY_VERSION):  # an ALS challenger that lost to the popularity promoted instead
        entry["popularity_version"] = int(tags[TAG_GATE_POPULARITY_VERSION])
    if tags.get(TAG_MANUAL_PROMOTED_BY):
        entry["promoted_by_hand"] = {"by": tags[TAG_MANUAL_PROMOTED_BY], "at": tags.get(TAG_MANUAL_PROMOTED_AT),
                                     "reason": tags.get(TAG_MANUAL_REASON) or None,
                                     "replaced_version": int(tags[TAG_MANUAL_REPLACED])
                                     if tags.get(TAG_MANUAL_REPLACED) else None}
    return entry


def describe(client: MlflowClient, name: str, limit: int = 10) -> dict[str, Any]:
    """What `registry show` prints: each alias with its version's record, then the newest ``limit`` versions
    (NDCG@10 of challenger, champion compared with and popularity, the gate's decision and rule, a champion
    that could not be loaded, a promotion by hand)."""
    current = aliases(client, name)
    aliases_of: dict[int, list[str]] = {}
    for alias, version in sorted(current.items()):
        aliases_of.setdefault(version, []).append(alias)
    out: dict[str, Any] = {"model": name, "tracking_uri": client.tracking_uri}
    for alias in (CHAMPION, PREVIOUS_CHAMPION):
        out[alias] = None
        if alias in current:
            with mlflow_errors(f"reading {name} version {current[alias]}"):
                out[alias] = _version_entry(client.get_model_version(name, str(current[alias])), aliases_of)
    with mlflow_errors(f"listing versions of {name!r}"):
        found = client.search_model_versions(f"name = '{_quoted(name)}'", max_results=limit,
                                             order_by=["version_number DESC"]) if limit > 0 else []
    out["versions"] = [_version_entry(mv, aliases_of) for mv in found]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipelines registry show|rollback|promote VERSION` against the pipeline's settings (env)."""
    from als_store.settings import Settings

    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m pipelines registry",
        description="show: the aliases and the newest versions with their scores and gate decisions (JSON); "
                    "rollback: champion <- previous_champion; promote VERSION: make VERSION the champion "
                    "(it must exist, be READY and load; the old champion becomes previous_champion).")
    parser.add_argument("command", choices=["show", "rollback", "promote"])
    parser.add_argument("version", nargs="?", type=int, help="promote: the version to make champion")
    parser.add_argument("--reason", default=None, help="promote: why, recorded in the version's tags")
    parser.add_argument("--limit", type=int, default=10, help="show: how many of the newest versions to list")
    parser.add_argument("--model-name", default=settings.model_name)
    parser.add_argument("--tracking-uri", default=settings.mlflow_tracking_uri)
    args = parser.parse_args(argv)
    if (args.command == "promote") != (args.version is not None):
        parser.error("VERSION goes with `promote`, and only with it")
    bound_mlflow_http()  # a dead server answers in seconds, not after MLflow's minutes of retries
    name, uri = args.model_name, args.tracking_uri
    try:
        check_reachable(uri)
        client = make_client(uri)
        lock = lock_path_for(uri, settings.home)
        if args.command == "rollback":
            demoted, restored = rollback(client, name, lock)
            print(f"{name}: champion v{demoted} -> v{restored} (v{demoted} is now {PREVIOUS_CHAMPION})")
        elif args.command == "promote":
            try:
                replaced = promote_by_hand(uri, name, args.version, lock, operator_name(), args.reason)
            except AlreadyChampion as exc:  # what was asked for holds already: not an error
                print(f"{exc}")
            else:
                was = "none" if replaced is None else f"v{replaced}"
                print(f"{name}: champion {was} -> v{args.version}"
                      + ("" if replaced is None else f" (v{replaced} is now {PREVIOUS_CHAMPION})"))
        print(json.dumps(describe(client, name, args.limit), indent=2))
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
