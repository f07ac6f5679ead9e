"""Prepare the persistent Dagster instance of the project (DAGSTER_HOME = Settings.dagster_home).

    eval "$(python -m pipelines.instance)"   # creates it, recovers stuck runs, prints `export DAGSTER_HOME=...`
    dagster dev                               # then uses the pools limits of pipelines/dagster.yaml
    python -m pipelines.instance --claim-warehouse   # production profile: the warehouse is on this machine now

Two profiles ship, chosen by the environment (no code change):
- embedded (default): `pipelines/dagster.yaml`, sqlite storage under DAGSTER_HOME, one machine;
- production, when DAGSTER_PG_HOST is set: `pipelines/dagster.postgres.yaml`, run/event-log/schedule storage in
  the Postgres database named by DAGSTER_PG_HOST, DAGSTER_PG_PORT, DAGSTER_PG_USERNAME, DAGSTER_PG_PASSWORD and
  DAGSTER_PG_DB (docs/deploy.md).
The selected file is copied when the instance has none, and replaces an instance's copy that nobody edited when
a newer one ships or the profile changes (as a package manager treats an unmodified config file), so an upgrade
gets the new settings and local edits survive; an edited copy of the other profile is refused, not overwritten.
Both name `PipelineInstance` (below) as the instance class: Dagster's own instance, plus the recovery of runs
whose process died (pipelines/recovery.py) before every new run.
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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import dagster as dg

from pipelines import recovery
from als_store.settings import Settings

SHIPPED_CONFIG = Path(__file__).resolve().parent / "dagster.yaml"
POSTGRES_CONFIG = Path(__file__).resolve().parent / "dagster.postgres.yaml"
# Dagster's own names for them (its docs and Helm chart); the first one selects the production profile
POSTGRES_VARIABLES = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD",
                      "DAGSTER_PG_DB")
# sha256 of the instance's copy as this module wrote it: a copy that still has it is unedited
SHIPPED_HASH_FILE = ".shipped-dagster.yaml.sha256"
# earlier shipped versions, for instances prepared before the hash file existed
EARLIER_SHIPPED_SHA256 = frozenset({"2bef26eb65329e66bcf48946fd313709d466cf8a4099789d536cbf5fc9b27cf7"})
RECOVERY_INTERVAL_S = 2.0  # a backfill creates many runs at once: one check serves them all

_log = logging.getLogger(__name__)


class InstanceConfigError(RuntimeError):
    """The environment selects a profile the instance cannot be given (variables missing, an edited copy)."""


def uses_postgres(environ: Mapping[str, str] | None = None) -> bool:
    """The production profile is selected: DAGSTER_PG_HOST is set and not empty."""
    env = os.environ if environ is None else environ
    return bool(env.get(POSTGRES_VARIABLES[0], "").strip())


def profile_config(environ: Mapping[str, str] | None = None) -> Path:
    """The shipped instance config the environment selects; raises InstanceConfigError naming the Postgres
    variables that are missing when DAGSTER_PG_HOST is set without them (an empty password counts as set)."""
    env = os.environ if environ is None else environ
    if not uses_postgres(env):
        return SHIPPED_CONFIG
    missing = [name for name in POSTGRES_VARIABLES if name not in env]
    if missing:
        raise InstanceConfigError(f"DAGSTER_PG_HOST selects the production profile (docs/deploy.md), which also "
                                  f"needs {', '.join(missing)} (DAGSTER_PG_PASSWORD may be empty)")
    return POSTGRES_CONFIG


def describe_profile(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if not uses_postgres(env):
        return "embedded (sqlite storage under DAGSTER_HOME; set DAGSTER_PG_HOST for the production profile)"
    host, port, user, _, db = (env.get(name, "") for name in POSTGRES_VARIABLES)
    return f"production (Dagster storage in Postgres {user}@{host}:{port}/{db})"


def prepare_dagster_home(settings: Settings, environ: Mapping[str, str] | None = None) -> Path:
    shipped = profile_config(environ)
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if config.exists() and _sha256(config) != _sha256(shipped) and not _unedited_copy(config):
        if _has_postgres_storage(config) != (shipped == POSTGRES_CONFIG):
            raise InstanceConfigError(
                f"{config} was edited by hand and is not the {shipped.name} profile that the environment selects: "
                f"merge {shipped} into it (or move it away to get the shipped one), then run this again")
        return home  # an edited copy of the selected profile: the operator's edits win
    if not config.exists() or _sha256(config) != _sha256(shipped):
        shutil.copyfile(shipped, config)
        (home / SHIPPED_HASH_FILE).write_text(_sha256(config) + "\n")
    return home


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unedited_copy(config: Path) -> bool:
    """The copy is one this module wrote (of either profile, this version or an earlier one)."""
    current = _sha256(config)
    hash_file = config.with_name(SHIPPED_HASH_FILE)
    written = hash_file.read_text().strip() if hash_file.exists() else None
    shipped_now = {_sha256(SHIPPED_CONFIG), _sha256(POSTGRES_CONFIG)}
    return current == written or current in EARLIER_SHIPPED_SHA256 or current in shipped_now


def _has_postgres_storage(config: Path) -> bool:
    import yaml

    loaded = yaml.safe_load(config.read_text()) or {}
    sections = [loaded.get(key) for key in ("storage", "run_storage", "event_log_storage", "schedule_storage")]
    return "postgres" in str(sections)


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


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    from pipelines import warehouse_claim

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.instance",
        description="Prepare the project's Dagster instance, recover stuck runs and print `export DAGSTER_HOME=...` "
                    "(the profile and anything recovered go to stderr).")
    parser.add_argument("--claim-warehouse", action="store_true",
                        help="production profile: record this machine and this home's warehouse file as the "
                             "deployment's warehouse (moving it on purpose); prints the previous claim")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        home = prepare_dagster_home(settings)
    except InstanceConfigError as exc:
        sys.exit(f"pipelines.instance: {exc}")
    print(f"instance profile: {describe_profile()}", file=sys.stderr)
    with open_instance(settings) as instance:
        recovery.recover(instance, log=lambda line: print(f"recovered {line}", file=sys.stderr))
        if args.claim_warehouse:
            if not warehouse_claim.is_shared(instance):
                print("warehouse claim: not needed (the embedded profile runs on one machine)", file=sys.stderr)
            else:
                previous = warehouse_claim.claim(instance, settings.duckdb_path)
                now = warehouse_claim.current_claim(instance)
                print(f"warehouse claim: {now} (previously {previous or 'none'})", file=sys.stderr)
    print(f"export DAGSTER_HOME={shlex.quote(str(home))}")


if __name__ == "__main__":
    main()
