"""Where the served model comes from, and the background watcher that swaps it.

The MLflow source resolves ``models:/<name>@champion`` to a version number once per poll (pinned: the alias can
move while a version downloads) and loads that version's bundle with `als_store.model_registry` (the read side
the pipeline uses too). The bundle-directory source serves one saved `ModelBundle` without MLflow (benchmarks,
local runs). The watcher builds a complete, immutable `LoadedModel` off the request path and publishes it with
one reference assignment; a failed load leaves the previous model serving.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from als_core.bundle import ModelBundle
from als_store import mlflow_store, model_registry
from als_store.model_tags import (CHAMPION, TAG_EVAL_CHALLENGER_NDCG, TAG_GATE_CHALLENGER_NDCG, first_tag_float,
                                  tag_float)
from serving.scoring import Scorer

log = logging.getLogger(__name__)

# Version tags that carry the model's holdout NDCG@10, most specific first (set by evaluation and the gate).
_NDCG_TAGS = (TAG_EVAL_CHALLENGER_NDCG, TAG_GATE_CHALLENGER_NDCG)


@dataclass(frozen=True)
class ModelKey:
    """What a source currently points at: enough to tell whether the loaded model is still the right one."""

    name: str
    version: int | None
    source: str  # "mlflow" | "bundle_dir"
    uri: str


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve. Never mutated: a new version is a new object."""

    key: ModelKey
    bundle: ModelBundle
    scorer: Scorer
    info: dict[str, Any]
    fold_in_since: dt.date | None  # the first day of events a folded-in user is read from


class ModelSource(Protocol):
    def describe(self) -> str: ...

    def resolve(self) -> ModelKey | None:
        """The model to serve now (None: nothing to serve yet). Raises when the source is unreachable."""

    def load(self, key: ModelKey) -> tuple[ModelBundle, dict[str, Any]]:
        """The bundle of ``key`` and what /model reports about it beyond the bundle's own sizes."""


def _iso_ms(ms: int | None) -> str | None:
    if not ms:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds")


def training_window(metadata: dict, tags: dict) -> tuple[str | None, str | None]:
    """(start, end) days the model was trained on: bundle metadata, else the run's version tag."""
    window = metadata.get("training_window")
    if isinstance(window, (list, tuple)) and len(window) == 2:
        return str(window[0]), str(window[1])
    text = tags.get("training_window", "")
    if ".." in text:
        start, end = text.split("..", 1)
        return start or None, end or None
    return None, None


def _day(text: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None


class MlflowChampionSource:
    def __init__(self, tracking_uri: str, model_name: str, alias: str = CHAMPION):
        self.tracking_uri = mlflow_store.validate_tracking_uri(tracking_uri)
        self.model_name = model_name
        self.alias = alias
        self._client = None

    def describe(self) -> str:
        return f"models:/{self.model_name}@{self.alias} in {self.tracking_uri}"

    def _get_client(self):
        if self._client is None:
            self._client = mlflow_store.make_client(self.tracking_uri)
        return self._client

    def resolve(self) -> ModelKey | None:
        db_path = mlflow_store.sqlite_path(self.tracking_uri)
        if db_path is not None and not db_path.is_file():
            # opening it would create an empty store (and its tables) here: leave that to the pipeline
            raise FileNotFoundError(f"MLflow store {db_path} does not exist yet (has the pipeline run?)")
        mlflow_store.check_reachable(self.tracking_uri)  # a dead server fails in seconds, not after MLflow's retries
        ref = model_registry.champion_ref(self._get_client(), self.model_name, self.alias)
        if ref is None:
            return None
        return ModelKey(self.model_name, ref.version, "mlflow", ref.uri)

    def load(self, key: ModelKey) -> tuple[ModelBundle, dict[str, Any]]:
        client = self._get_client()
        bundle = model_registry.load_bundle(self.tracking_uri, key.name, key.version)
        with mlflow_store.mlflow_errors(f"reading {key.name} version {key.version}"):
            version = client.get_model_version(key.name, str(key.version))
            run = client.get_run(version.run_id) if version.run_id else None
        tags = dict(version.tags or {})
        ndcg = first_tag_float(tags, _NDCG_TAGS, finite=True)
        return bundle, {
            "run_id": version.run_id,
            "registered_at": _iso_ms(version.creation_timestamp),
            "trained_at": _iso_ms(run.info.end_time or run.info.start_time) if run else None,
            "ndcg_at_10": ndcg,
            "tags": tags,
        }


class BundleDirSource:
    """One saved ModelBundle directory, loaded once (ALS_SERVING_BUNDLE_DIR)."""

    def __init__(self, directory: Path, name: str | None = None):
        self.directory = Path(directory).absolute()
        self.name = name or self.directory.name

    def describe(self) -> str:
        return f"bundle directory {self.directory}"

    def resolve(self) -> ModelKey | None:
        if not (self.directory / "bundle.json").is_file():
            raise FileNotFoundError(f"{self.directory} is not a ModelBundle directory (no bundle.json)")
        return ModelKey(self.name, None, "bundle_dir", self.directory.as_uri())

    def load(self, key: ModelKey) -> tuple[ModelBundle, dict[str, Any]]:
        bundle = ModelBundle.load(self.directory)
        mtime = (self.directory / "bundle.json").stat().st_mtime
        return bundle, {"run_id": bundle.metadata.get("mlflow_run_id"), "registered_at": None,
                        "trained_at": _iso_ms(int(mtime * 1000)),
                        "ndcg_at_10": tag_float(bundle.metadata.get("ndcg@10"), finite=True), "tags": {}}


def build_loaded_model(key: ModelKey, bundle: ModelBundle, extra: dict[str, Any], max_n: int) -> LoadedModel:
    scorer = Scorer(bundle, max_n)
    start, end = training_window(bundle.metadata, extra.get("tags", {}))
    info = {
        "name": key.name,
        "version": key.version,
        "source": key.source,
        "uri": key.uri,
        "loaded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "training_window_start": start,
        "training_window_end": end,
        "n_users": len(bundle.users),
        "n_items": len(bundle.items),
        "n_interactions": int(bundle.seen.nnz),
        "kind": bundle.kind,
        "factors": None if bundle.model is None else int(bundle.model.item_factors.shape[1]),
        "metadata": bundle.metadata,
        **extra,
    }
    return LoadedModel(key=key, bundle=bundle, scorer=scorer, info=info, fold_in_since=_day(end))


@dataclass
class WatcherStatus:
    """Why the service is (not) ready; replaced whole on change, read by /ready."""

    reason: str
    last_error: str | None = None
    last_poll_at: str | None = None


class ModelWatcher:
    """Polls the source, loads a new model off the request path and swaps it in with one assignment."""

    def __init__(self, source: ModelSource, poll_seconds: float, max_n: int):
        self.source = source
        self.poll_seconds = float(poll_seconds)
        self.max_n = int(max_n)
        self._current: LoadedModel | None = None
        self.status = WatcherStatus(reason=f"starting: first look at {source.describe()} pending")
        self._poll_lock = threading.Lock()  # one poll at a time, even if called from a test and the task

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def poll_once(self) -> bool:
        """Resolve the source; load and swap if it points elsewhere. Returns True when a new model went live.
        Errors are logged and recorded, never raised: the previous model keeps serving."""
        with self._poll_lock:
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            current = self._current
            try:
                key = self.source.resolve()
            except Exception as exc:  # unreachable store, bad directory: keep what we have, retry next poll
                message = f"cannot reach {self.source.describe()}: {exc}"
                self._record_error(message, now)
                return False
            if key is None:
                reason = (f"no `champion` yet: {self.source.describe()} does not exist or has no champion alias; "
                          "nothing to serve until the pipeline promotes a model")
                if current is not None:  # the alias was removed: keep serving what we have rather than nothing
                    reason = f"{reason} (still serving {current.key.name} v{current.key.version})"
                    log.warning(reason)
                self.status = WatcherStatus(reason=reason, last_poll_at=now)
                return False
            if current is not None and current.key == key:
                self.status = WatcherStatus(reason="serving", last_poll_at=now)
                return False
            started = time.monotonic()
            log.info("loading %s v%s from %s", key.name, key.version, key.uri)
            try:
                bundle, extra = self.source.load(key)
                loaded = build_loaded_model(key, bundle, extra, self.max_n)
            except Exception as exc:
                message = f"loading {key.name} v{key.version} failed: {type(exc).__name__}: {exc}"
                log.exception(message)
                self.status = WatcherStatus(
                    reason=message if current is None
                    else f"{message} (still serving {current.key.name} v{current.key.version})",
                    last_error=message, last_poll_at=now)
                return False
            self._current = loaded  # the swap: requests read this reference once each
            self.status = WatcherStatus(reason="serving", last_poll_at=now)
            previous = "nothing" if current is None else f"v{current.key.version}"
            log.info("now serving %s v%s (was %s), loaded in %.1fs", key.name, key.version, previous,
                     time.monotonic() - started)
            return True

    def _record_error(self, message: str, now: str) -> None:
        current = self._current
        if message != self.status.last_error:
            log.warning(message)
        reason = message if current is None else f"{message} (still serving {current.key.name} v{current.key.version})"
        self.status = WatcherStatus(reason=reason, last_error=message, last_poll_at=now)

    async def run(self) -> None:
        """Poll forever (until cancelled); the blocking MLflow calls and loads run in a worker thread."""
        while True:
            try:
                await asyncio.to_thread(self.poll_once)
            except Exception:  # never let the loop die: the next poll may succeed
                log.exception("model poll crashed")
            await asyncio.sleep(self.poll_seconds)
