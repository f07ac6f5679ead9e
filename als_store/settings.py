"""Where everything the pipeline writes lives, read from the environment.

No Dagster import: `serving/` and plain scripts reuse it. Every path is absolute, so a process
started from another working directory (the Dagster CLI, a test, uvicorn) finds the same files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_NAME = "als-recommender"


def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().absolute()


def _absolute_sqlite_uri(uri: str) -> str:
    """`sqlite:///relative.db` depends on the working directory; pin it to an absolute path."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(_absolute(uri[len(prefix) :]))
    return uri


@dataclass(frozen=True)
class Settings:
    home: Path
    duckdb_path: Path
    mlflow_tracking_uri: str
    mlflow_artifact_root: Path
    dagster_home: Path
    landing_dir: Path
    training_dir: Path
    model_name: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = _absolute(env.get("ALS_PIPELINE_HOME") or PROJECT_ROOT / ".data")
        tracking_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
        return cls(
            home=home,
            duckdb_path=home / "warehouse.duckdb",
            mlflow_tracking_uri=_absolute_sqlite_uri(tracking_uri),
            mlflow_artifact_root=home / "mlartifacts",
            dagster_home=home / "dagster",
            landing_dir=_absolute(env.get("ALS_PIPELINE_LANDING") or home / "landing"),
            training_dir=home / "training",
            model_name=env.get("ALS_MODEL_NAME") or DEFAULT_MODEL_NAME,
        )
