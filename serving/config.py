"""Serving settings from the environment, on top of the pipeline's `Settings` (same home, store and model)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from als_store.settings import Settings


def _number(env: Mapping[str, str], name: str, default, kind, minimum):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be >= {minimum}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (1/0, true/false)")


@dataclass(frozen=True)
class ServingConfig:
    model_name: str
    tracking_uri: str
    duckdb_path: Path
    bundle_dir: Path | None = None  # serve this ModelBundle directory instead of the MLflow champion
    poll_seconds: float = 30.0
    max_n: int = 100
    max_batch: int = 1000
    max_body_bytes: int = 1 << 20  # larger request bodies get 413 before they are parsed
    fold_in: bool = True
    fold_in_refresh_seconds: float = 10.0
    fold_in_lookback_days: int = 3
    fold_in_max_events: int = 500
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # uvicorn processes; each loads the model (use the number of cores)

    @property
    def fold_in_max_age_seconds(self) -> float:
        """A snapshot older than this (reads keep failing) is dropped: popularity beats stale fold-in."""
        return max(3 * self.fold_in_refresh_seconds, 60.0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServingConfig:
        env = os.environ if environ is None else environ
        settings = Settings.from_env(env)
        bundle_dir = env.get("ALS_SERVING_BUNDLE_DIR")
        return cls(
            model_name=settings.model_name,
            tracking_uri=settings.mlflow_tracking_uri,
            duckdb_path=settings.duckdb_path,
            bundle_dir=Path(bundle_dir).expanduser().absolute() if bundle_dir else None,
            poll_seconds=_number(env, "ALS_SERVING_POLL_SECONDS", 30.0, float, 0.05),
            max_n=_number(env, "ALS_SERVING_MAX_N", 100, int, 1),
            max_batch=_number(env, "ALS_SERVING_MAX_BATCH", 1000, int, 1),
            max_body_bytes=_number(env, "ALS_SERVING_MAX_BODY_BYTES", 1 << 20, int, 1),
            fold_in=_flag(env, "ALS_SERVING_FOLD_IN", True),
            fold_in_refresh_seconds=_number(env, "ALS_SERVING_FOLD_IN_REFRESH_SECONDS", 10.0, float, 0.05),
            fold_in_lookback_days=_number(env, "ALS_SERVING_FOLD_IN_LOOKBACK_DAYS", 3, int, 1),
            fold_in_max_events=_number(env, "ALS_SERVING_FOLD_IN_MAX_EVENTS", 500, int, 1),
            host=env.get("ALS_SERVING_HOST") or "127.0.0.1",
            port=_number(env, "ALS_SERVING_PORT", 8000, int, 0),
            workers=_number(env, "ALS_SERVING_WORKERS", 1, int, 1),
        )
