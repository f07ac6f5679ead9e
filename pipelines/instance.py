"""Prepare the persistent Dagster instance of the project (DAGSTER_HOME = Settings.dagster_home).

    eval "$(python -m pipelines.instance)"   # creates it if needed, prints `export DAGSTER_HOME=...`
    dagster dev                               # then uses the pools limits of pipelines/dagster.yaml

The shipped `pipelines/dagster.yaml` is copied only when the instance has none, so local edits
there survive; nothing heavy happens at import.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from pipelines.settings import Settings

SHIPPED_CONFIG = Path(__file__).resolve().parent / "dagster.yaml"


def prepare_dagster_home(settings: Settings | None = None) -> Path:
    settings = settings or Settings.from_env()
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(SHIPPED_CONFIG, config)
    return home


def dagster_env(settings: Settings | None = None) -> dict[str, str]:
    """This process's environment with DAGSTER_HOME set to the prepared instance (for subprocesses)."""
    return {**os.environ, "DAGSTER_HOME": str(prepare_dagster_home(settings))}


def main() -> None:
    print(f"export DAGSTER_HOME={shlex.quote(str(prepare_dagster_home()))}")


if __name__ == "__main__":
    main()
