"""Which machine holds the warehouse, recorded in a shared Dagster instance.

In the production profile several machines share the Dagster instance, but the DuckDB file has a single writer
and lives on one machine's disk (with the home's training/ and scored_lists/). The first DuckDB write of a run
records a claim, {host, path}, in the instance's key-value store; a write from another host or to another path
then fails before it opens anything (`check_or_claim`). `python -m pipelines.instance --claim-warehouse` moves
the claim on purpose (`claim`). The embedded (sqlite) instance is one machine by construction: no claim.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import dagster as dg

from pipelines.registry.locks import AdvisoryLock, instance_postgres_url

CLAIM_KEY = "als_pipeline/warehouse"
CLAIM_LOCK_KEY = "als-pipeline:warehouse-claim"  # serialises the read-then-write of a claim across machines
CLAIM_TIMEOUT_S = 60.0
CLAIM_COMMAND = "python -m pipelines.instance --claim-warehouse"


class WarehouseElsewhere(RuntimeError):
    """A DuckDB write on a machine (or at a path) that is not the warehouse's: nothing was opened."""


@dataclasses.dataclass(frozen=True)
class WarehouseClaim:
    host: str
    path: str

    @classmethod
    def here(cls, path: str | Path) -> WarehouseClaim:
        return cls(host=socket.gethostname(), path=str(Path(path).resolve()))

    @classmethod
    def from_json(cls, text: str) -> WarehouseClaim:
        loaded = json.loads(text)
        return cls(host=str(loaded.get("host")), path=str(loaded.get("path")))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def __str__(self) -> str:
        return f"{self.path} on {self.host}"


def is_shared(instance: dg.DagsterInstance | None) -> bool:
    """The instance's storage is shared by machines (Postgres): the warehouse needs a claim."""
    return instance_postgres_url(instance) is not None


def current_claim(instance: dg.DagsterInstance) -> WarehouseClaim | None:
    value = instance.run_storage.get_cursor_values({CLAIM_KEY}).get(CLAIM_KEY)
    return None if value is None else WarehouseClaim.from_json(value)


def _claim_lock(instance: dg.DagsterInstance) -> AdvisoryLock:
    return AdvisoryLock(instance_postgres_url(instance), CLAIM_LOCK_KEY, label="warehouse claim lock")


def check_or_claim(instance: dg.DagsterInstance | None, path: str | Path) -> WarehouseClaim | None:
    """Before a DuckDB write to ``path``: on a shared instance, record the claim if there is none, else raise
    WarehouseElsewhere unless it names this host and path. Returns the claim (None: not a shared instance)."""
    if not is_shared(instance):
        return None
    here = WarehouseClaim.here(path)
    claimed = current_claim(instance)
    if claimed is None:
        with _claim_lock(instance).hold(CLAIM_TIMEOUT_S):  # two first writes on two machines: one claim wins
            claimed = current_claim(instance)
            if claimed is None:
                instance.run_storage.set_cursor_values({CLAIM_KEY: here.to_json()})
                claimed = here
    if claimed != here:
        raise WarehouseElsewhere(
            f"the warehouse of this deployment is {claimed} (claimed in the Dagster instance, key {CLAIM_KEY!r}), "
            f"and this process would write {here}: nothing was written. DuckDB has one writer on one machine's "
            f"disk, so the run workers of this code location must run on {claimed.host} (docs/deploy.md). To move "
            f"the warehouse on purpose, copy the home's warehouse.duckdb, training/ and scored_lists/ to this "
            f"machine and run `{CLAIM_COMMAND}` here.")
    return claimed


def claim(instance: dg.DagsterInstance, path: str | Path) -> WarehouseClaim | None:
    """Make this host and ``path`` the warehouse's claim on a shared instance; returns the previous claim."""
    with _claim_lock(instance).hold(CLAIM_TIMEOUT_S):
        previous = current_claim(instance)
        instance.run_storage.set_cursor_values({CLAIM_KEY: WarehouseClaim.here(path).to_json()})
    return previous
