"""The tuning asset's output: the best hyperparameters, as JSON under the pipeline home.

Written atomically (temp file + rename) so a challenger never reads half a file; read by the challenger
when its config says ``use_tuned``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from als_store.settings import Settings

TUNABLE = ("factors", "regularization", "alpha")


def best_params_path(settings: Settings) -> Path:
    return settings.home / "tuning" / "best_params.json"


def write_best_params(settings: Settings, payload: dict) -> Path:
    """``payload`` holds ``params`` (the tuned hyperparameters) and whatever explains them."""
    if not set(payload.get("params", {})) <= set(TUNABLE) or not payload.get("params"):
        raise ValueError(f"params must be a non-empty subset of {TUNABLE}, got {payload.get('params')}")
    path = best_params_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=2, default=str)
    os.replace(handle.name, path)
    return path


def read_best_params(settings: Settings) -> dict | None:
    """The tuned hyperparameters, or None when no tuning has run yet (or the file is unreadable)."""
    path = best_params_path(settings)
    try:
        params = json.loads(path.read_text())["params"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None
    return {key: params[key] for key in TUNABLE if key in params}
