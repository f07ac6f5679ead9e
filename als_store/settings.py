"""Where everything the pipeline writes lives: the home and the paths under it, the landing directory, the
MLflow store and the model's name.

No Dagster import: `serving/` and plain scripts reuse it. Every path is absolute, so a process
started from another working directory (the Dagster CLI, a test, uvicorn) finds the same files.
The code location builds it through its `pipeline` resource (pipelines/defs/resources.py), the API and the
command-line tools through `Settings.from_env()`; both take the same variables (`VARIABLES`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = PROJECT_ROOT / ".data"
DEFAULT_MODEL_NAME = "als-recommender"
# argument of `Settings.build` -> the environment variable that sets it
VARIABLES = {
    "home": "ALS_PIPELINE_HOME",
    "landing_dir": "ALS_PIPELINE_LANDING",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "model_name": "ALS_MODEL_NAME",
}


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
    scored_lists_dir: Path
    model_name: str

    @classmethod
    def build(cls, home: str | Path | None = None, landing_dir: str | Path | None = None,
              mlflow_tracking_uri: str | None = None, model_name: str | None = None) -> Settings:
        """The layout under `home`; an empty argument takes its default (under the home where it has one)."""
        home = _absolute(home or DEFAULT_HOME)
        tracking_uri = mlflow_tracking_uri or f"sqlite:///{home / 'mlflow.db'}"
        return cls(
            home=home,
            duckdb_path=home / "warehouse.duckdb",
            mlflow_tracking_uri=_absolute_sqlite_uri(tracking_uri),
            mlflow_artifact_root=home / "mlartifacts",
            dagster_home=home / "dagster",
            landing_dir=_absolute(landing_dir or home / "landing"),
            training_dir=home / "training",
            scored_lists_dir=home / "scored_lists",
            model_name=model_name or DEFAULT_MODEL_NAME,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls.build(**{argument: env.get(variable) for argument, variable in VARIABLES.items()})

    def environment(self) -> dict[str, str]:
        """The variables that give these settings to another process (`from_env` there returns them)."""
        values = {"home": str(self.home), "landing_dir": str(self.landing_dir),
                  "mlflow_tracking_uri": self.mlflow_tracking_uri, "model_name": self.model_name}
        return {VARIABLES[argument]: value for argument, value in values.items()}
