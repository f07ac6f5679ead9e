"""Registering a model version: the pyfunc's signature and pinned requirements, the smoke test a version
must pass before it is registered, an ALS bundle or a popularity bundle (with a run of its own), and the
version tags."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from als_store.mlflow_store import RegistryError, make_client, mlflow_errors, using_tracking_uri
from als_store.model_registry import VersionRef, get_version
from als_store.model_tags import (BUNDLE_ARTIFACT_KEY, DEFAULT_N, KIND_POPULARITY, MODEL_ARTIFACT_NAME,
                                  TAG_MODEL_KIND, TAG_POPULARITY_OF)
from pipelines.registry.run_log import finish_run, log_metrics, start_training_run

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from als_core.bundle import ModelBundle

MODEL_CODE_PATH = Path(__file__).resolve().parents[1] / "mlflow_model.py"


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
