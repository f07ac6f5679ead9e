"""The model registry's read side: versions and aliases, the champion, a version's bundle, and the listing
`python -m pipelines registry show` prints. The pipeline and the API both read through it; the writes (runs,
registration, the gate, promotion) are in `pipelines/registry/`.

Resolve ``champion`` once to a version number and keep that number (`champion_ref`): the alias moves when a
retrain wins, possibly while a version downloads.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from als_store.mlflow_store import (BundleUnloadable, RegistryError, check_reachable, make_client, mlflow_errors,
                                    quoted, using_tracking_uri)
from als_store.model_tags import (BUNDLE_ARTIFACT_KEY, CHAMPION, KIND_ALS, PREVIOUS_CHAMPION, TAG_DAGSTER_RUN_ID,
                                  TAG_EVAL_CHALLENGER_NDCG, TAG_EVAL_CHAMPION_LOAD_ERROR, TAG_EVAL_POPULARITY_NDCG,
                                  TAG_GATE_ALS_NDCG, TAG_GATE_CHALLENGER_NDCG, TAG_GATE_CHAMPION_NDCG,
                                  TAG_GATE_POPULARITY_NDCG, TAG_GATE_POPULARITY_VERSION, TAG_GATE_PREFIX,
                                  TAG_MANUAL_PROMOTED_AT, TAG_MANUAL_PROMOTED_BY, TAG_MANUAL_REASON,
                                  TAG_MANUAL_REPLACED, TAG_POPULARITY_OF, first_tag_float, kind_of,
                                  tag_float)

if TYPE_CHECKING:  # heavy imports stay lazy: the CLI and the API start faster
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from als_core.bundle import ModelBundle


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


def get_version(client: MlflowClient, name: str, version: int | str) -> VersionRef:
    with mlflow_errors(f"reading {name} version {version}"):
        return VersionRef.of(client.get_model_version(name, str(version)))


def version_or_none(client: MlflowClient, name: str, version: int) -> ModelVersion | None:
    """The version as MLflow gives it, or None when the model has no such version."""
    from mlflow.exceptions import MlflowException

    with mlflow_errors(f"reading {name} version {version}"):
        try:
            return client.get_model_version(name, str(int(version)))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise


def find_version(client: MlflowClient, name: str, dagster_run_id: str | None = None) -> VersionRef:
    """The ALS challenger registered by ``dagster_run_id``; without one (an asset materialised on its own), or
    when that run registered none, the newest ALS version of ``name``. Popularity versions (which the gate
    registers, in the same run) are never a challenger."""
    name = quoted(name)
    with mlflow_errors(f"searching versions of {name!r}"):
        if dagster_run_id:
            found = [mv for mv in client.search_model_versions(
                f"name = '{name}' AND tags.{TAG_DAGSTER_RUN_ID} = '{quoted(dagster_run_id)}'"
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


# --------------------------------------------------------------------------------------------- bundles


def download_bundle(tracking_uri: str, name: str, version: int, dst_dir: Path) -> Path:
    """Download version ``version`` of ``name`` into ``dst_dir``; return its bundle directory."""
    import mlflow.artifacts

    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    # models:/ URIs resolve through the global registry URI whatever download_artifacts is given
    with mlflow_errors(f"downloading {name} version {version}"), using_tracking_uri(tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{int(version)}", dst_path=str(dst_dir), tracking_uri=tracking_uri))
    return bundle_dir(local, name, version)


def bundle_dir(model_dir: Path, name: str, version: int) -> Path:
    """The bundle directory inside a logged model's directory (where its MLmodel says)."""
    from mlflow.models import Model

    if not (model_dir / "MLmodel").is_file():  # MLflow's own error names the temporary download directory
        raise RegistryError(f"{name} version {version} has no MLmodel file in its artifacts")
    pyfunc_conf = Model.load(str(model_dir / "MLmodel")).flavors["python_function"]
    path = model_dir / pyfunc_conf["artifacts"][BUNDLE_ARTIFACT_KEY]["path"]
    if not path.is_dir():
        raise RegistryError(f"{name} version {version} has no `{BUNDLE_ARTIFACT_KEY}` artifact directory")
    return path


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
        return ModelBundle.load(bundle_dir(local, name, version))
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


# --------------------------------------------------------------------------------------------- the listing


def _version_entry(mv, aliases_of: Mapping[int, list[str]]) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    gate = {key[len(TAG_GATE_PREFIX):]: value for key, value in tags.items() if key.startswith(TAG_GATE_PREFIX)}
    entry = {
        "version": int(mv.version),
        "kind": kind_of(tags),
        "aliases": aliases_of.get(int(mv.version), []),
        "status": mv.status,
        "run_id": mv.run_id,
        "ndcg_at_10": first_tag_float(tags, (TAG_GATE_CHALLENGER_NDCG, TAG_EVAL_CHALLENGER_NDCG)),
        "popularity_ndcg_at_10": first_tag_float(tags, (TAG_EVAL_POPULARITY_NDCG, TAG_GATE_POPULARITY_NDCG)),
        "decision": gate.get("decision"),  # None: never gated
        "rule": gate.get("rule"),
        "compared_with_version": int(gate["champion_version"]) if gate.get("champion_version") else None,
        "champion_ndcg_at_10": tag_float(tags.get(TAG_GATE_CHAMPION_NDCG)),
        "champion_load_error": gate.get("champion_load_error") or tags.get(TAG_EVAL_CHAMPION_LOAD_ERROR) or None,
        "decided_at": gate.get("decided_at"),
    }
    if tags.get(TAG_POPULARITY_OF):  # a popularity version: the ALS challenger it was counted for and beat
        entry["popularity_of_version"] = int(tags[TAG_POPULARITY_OF])
        entry["als_ndcg_at_10"] = tag_float(tags.get(TAG_GATE_ALS_NDCG))
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
        found = client.search_model_versions(f"name = '{quoted(name)}'", max_results=limit,
                                             order_by=["version_number DESC"]) if limit > 0 else []
    out["versions"] = [_version_entry(mv, aliases_of) for mv in found]
    return out
