"""Lists a model version already scored, kept for the `recommendations` asset. No Dagster import.

`evaluation` scores the challenger's holdout users anyway (about half of all users in a daily retrain); it
scores them as deep as `recommendations` writes (top 50 costs the same matrix products as top 10) and keeps
them here, so that on the day the challenger is promoted `recommendations` scores only the other users.
One npz per MLflow run (a run id names one model version in one store, unlike a version number), arrays only,
written to a temporary name and renamed. A file that is missing or too shallow just means scoring again.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

from pipelines.recommendations_table import PrescoredLists
from als_store.settings import Settings

KEEP = 3  # newest files kept: the latest challengers; older ones can no longer become champion unscored


def _path(settings: Settings, run_id: str) -> Path:
    if not run_id.isalnum():  # MLflow run ids are hex; anything else must not become a path
        raise ValueError(f"unexpected MLflow run id {run_id!r}")
    return settings.scored_lists_dir / f"{run_id}.npz"


def save(settings: Settings, run_id: str, lists: PrescoredLists) -> Path:
    """Keep ``lists`` (bundle rows and their top lists) of the model version logged by MLflow run ``run_id``."""
    path = _path(settings, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}-{uuid.uuid4().hex}.npz")
    np.savez(partial, rows=lists.rows.astype(np.int64), item_index=lists.item_index.astype(np.int32),
             scores=lists.scores.astype(np.float32))
    os.replace(partial, path)
    for old in sorted(settings.scored_lists_dir.glob("*.npz"), key=lambda p: p.stat().st_mtime)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load(settings: Settings, run_id: str, n: int) -> PrescoredLists | None:
    """The lists kept for ``run_id`` if they are at least ``n`` deep, else None."""
    path = _path(settings, run_id)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            lists = PrescoredLists(arrays["rows"], arrays["item_index"].astype(np.int64), arrays["scores"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):  # missing or damaged: score again
        return None
    return lists if lists.item_index.shape[1] >= n else None
