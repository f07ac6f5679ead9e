"""The warehouse stays on one machine, and a shared (Postgres) instance enforces it (pipelines/warehouse_claim.py):
the first DuckDB write records {host, path} in the instance; a write from elsewhere fails before it touches the
file; `python -m pipelines.instance --claim-warehouse` moves the claim on purpose. Runs of the project's
`ingest` job against the real cluster of tests/postgres_server.py."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from crash_helpers import QUIET, land
from pipelines import warehouse_claim
from pipelines.instance import open_instance

ROOT = Path(__file__).resolve().parents[1]
DAYS = ["2026-01-01", "2026-01-02"]


def ingest(settings, instance, day: str) -> dg.ExecuteInJobResult:
    from pipelines.definitions import defs_at
    from pipelines.defs.resources import PipelineSettings

    job = defs_at(PipelineSettings.of(settings)).resolve_job_def("ingest")
    return job.execute_in_process(partition_key=day, instance=instance, run_config=QUIET, raise_on_error=False)


def failure_messages(result: dg.ExecuteInJobResult) -> str:
    """The failed steps' errors with their causes (Dagster wraps the op's exception)."""
    messages = []
    for event in result.all_events:
        error = event.step_failure_data.error if event.event_type == dg.DagsterEventType.STEP_FAILURE else None
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return "\n".join(messages)


def claim_warehouse(environment: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.instance", "--claim-warehouse"], cwd=ROOT,
                          env={**os.environ, **environment}, capture_output=True, text=True, timeout=120)


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.mark.slow  # Postgres-backed Dagster, the ingest job, a subprocess
@pytest.mark.parametrize("forged", ["host", "path"])
def test_a_write_from_elsewhere_fails_untouched_until_the_warehouse_is_claimed(production_profile, forged):
    settings = production_profile.settings
    land(settings, days=DAYS)
    here = warehouse_claim.WarehouseClaim(socket.gethostname(), str(settings.duckdb_path.resolve()))
    with open_instance(settings) as instance:
        assert warehouse_claim.current_claim(instance) is None
        assert ingest(settings, instance, DAYS[0]).success
        assert warehouse_claim.current_claim(instance) == here  # the first write claimed it

        elsewhere = (warehouse_claim.WarehouseClaim("warehouse-host", here.path) if forged == "host"
                     else warehouse_claim.WarehouseClaim(here.host, "/srv/other-home/warehouse.duckdb"))
        instance.run_storage.set_cursor_values({warehouse_claim.CLAIM_KEY: elsewhere.to_json()})
        before = fingerprint(settings.duckdb_path)
        refused = ingest(settings, instance, DAYS[1])
        assert not refused.success
        message = failure_messages(refused)
        assert f"the warehouse of this deployment is {elsewhere}" in message
        assert f"must run on {elsewhere.host} (docs/deploy.md)" in message
        assert "python -m pipelines.instance --claim-warehouse" in message and "nothing was written" in message
        assert fingerprint(settings.duckdb_path) == before
        assert not settings.duckdb_path.with_name(settings.duckdb_path.name + ".wal").exists()

    moved = claim_warehouse(production_profile.environment)
    assert moved.returncode == 0, moved.stderr
    assert f"warehouse claim: {here} (previously {elsewhere})" in moved.stderr
    assert moved.stdout.strip() == f"export DAGSTER_HOME={settings.dagster_home}"
    with open_instance(settings) as instance:
        assert warehouse_claim.current_claim(instance) == here
        assert ingest(settings, instance, DAYS[1]).success
    assert fingerprint(settings.duckdb_path) != before


@pytest.mark.slow  # a subprocess
def test_the_embedded_profile_records_no_claim(settings):
    """One machine by construction: a write on the sqlite instance checks nothing and records nothing."""
    land(settings, days=DAYS[:1])
    with open_instance(settings) as instance:
        assert not warehouse_claim.is_shared(instance)
        assert ingest(settings, instance, DAYS[0]).success
        assert instance.run_storage.get_cursor_values({warehouse_claim.CLAIM_KEY}) == {}
    claimed = claim_warehouse(settings.environment())
    assert claimed.returncode == 0, claimed.stderr
    assert "warehouse claim: not needed (the embedded profile runs on one machine)" in claimed.stderr
