"""Neither Dagster nor MLflow reports usage from this project unless the user says so."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from als_store.settings import PROJECT_ROOT

_CHECK = "import serving.app, mlflow.telemetry.utils as t; print(t.MLFLOW_DISABLE_TELEMETRY.get())"


@pytest.mark.parametrize("preset,expected", [(None, "True"), ("false", "False")])
def test_mlflow_telemetry_is_off_unless_asked_for(preset, expected):
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    if preset is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = preset
    out = subprocess.run([sys.executable, "-c", _CHECK], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == expected


def test_dagster_telemetry_is_off_in_the_shipped_instance_config():
    config = yaml.safe_load((PROJECT_ROOT / "pipelines" / "dagster.yaml").read_text())
    assert config["telemetry"] == {"enabled": False}
