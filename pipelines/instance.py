"""Prepare the persistent Dagster instance of the project (DAGSTER_HOME = Settings.dagster_home).

    eval "$(python -m pipelines.instance)"   # creates it, recovers stuck runs, prints `export DAGSTER_HOME=...`
    dagster dev                               # then uses the pools limits of pipelines/dagster.yaml

The shipped `pipelines/dagster.yaml` is copied when the instance has none, and replaces an instance's
copy that nobody edited when a newer one ships (as a package manager treats an unmodified config file), so
an upgrade gets the new settings and local edits survive. It names `PipelineInstance` (below) as the instance class: Dagster's own instance,
plus the recovery of runs whose process died (pipelines/recovery.py) before every new run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from pipelines import recovery
from als_store.settings import Settings

SHIPPED_CONFIG = Path(__file__).resolve().parent / "dagster.yaml"
# sha256 of the instance's copy as this module wrote it: a copy that still has it is unedited
SHIPPED_HASH_FILE = ".shipped-dagster.yaml.sha256"
# earlier shipped versions, for instances prepared before the hash file existed
EARLIER_SHIPPED_SHA256 = frozenset({"2bef26eb65329e66bcf48946fd313709d466cf8a4099789d536cbf5fc9b27cf7"})
RECOVERY_INTERVAL_S = 2.0  # a backfill creates many runs at once: one check serves them all

_log = logging.getLogger(__name__)


def prepare_dagster_home(settings: Settings) -> Path:
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() or _unedited_older_copy(config):
        shutil.copyfile(SHIPPED_CONFIG, config)
        (home / SHIPPED_HASH_FILE).write_text(_sha256(config) + "\n")
    return home


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unedited_older_copy(config: Path) -> bool:
    current = _sha256(config)
    if current == _sha256(SHIPPED_CONFIG):
        return False
    hash_file = config.with_name(SHIPPED_HASH_FILE)
    written = hash_file.read_text().strip() if hash_file.exists() else None
    return current == written or current in EARLIER_SHIPPED_SHA256


def dagster_env(settings: Settings) -> dict[str, str]:
    """This process's environment with `settings`' variables and DAGSTER_HOME set to the prepared instance (for
    subprocesses)."""
    return {**os.environ, **settings.environment(), "DAGSTER_HOME": str(prepare_dagster_home(settings))}


@contextlib.contextmanager
def open_instance(settings: Settings) -> Iterator[dg.DagsterInstance]:
    """The project's instance (prepared if needed), disposed of on exit."""
    instance = dg.DagsterInstance.from_config(str(prepare_dagster_home(settings)))
    try:
        yield instance
    finally:
        instance.dispose()


class PipelineInstance(dg.DagsterInstance):
    """The project's Dagster instance (`instance_class` in pipelines/dagster.yaml).

    - Before it creates a run (a schedule, the sensor, the UI, `dagster job execute`, the demo), it fails
      the runs whose process is gone and frees the pool slots they hold (`recovery.recover`): without
      that, a run killed mid-step keeps pool `duckdb` or `promotion` and every later run waits for ever.
      Dagster's run monitoring does the same only inside a daemon, and cannot see a dead process.
    - A run or step worker that opens it ends when the process that started it ends
      (`recovery.die_with_parent`), so killing a run kills its steps.
    """

    _last_recovery = 0.0

    @classmethod
    def config_schema(cls) -> dict:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> dict:
        from dagster._core.instance.ref import InstanceRef

        return InstanceRef.config_defaults(base_dir)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        recovery.die_with_parent()

    def _recover_stuck_runs(self) -> None:
        now = time.monotonic()
        if now - self._last_recovery < RECOVERY_INTERVAL_S:
            return
        self._last_recovery = now
        try:
            recovery.recover(self, log=lambda line: _log.warning(f"recovered {line}"))
        except Exception:  # never stop a new run because the clean-up of old ones failed
            _log.exception(f"could not check for stuck runs; `{recovery.RECOVER_COMMAND}` retries it")

    def create_run(self, **kwargs) -> dg.DagsterRun:
        self._recover_stuck_runs()
        return super().create_run(**kwargs)

    def create_run_for_job(self, *args, **kwargs) -> dg.DagsterRun:
        self._recover_stuck_runs()
        return super().create_run_for_job(*args, **kwargs)


def main() -> None:
    settings = Settings.from_env()
    home = prepare_dagster_home(settings)
    with open_instance(settings) as instance:
        recovery.recover(instance, log=lambda line: print(f"recovered {line}", file=sys.stderr))
    print(f"export DAGSTER_HOME={shlex.quote(str(home))}")


if __name__ == "__main__":
    main()
