"""Recent warehouse events of users the served model does not know, for fold-in.

Opening the DuckDB file costs tens of milliseconds and scanning `events` for one user is a full scan (the table
is ordered by day, not by user), and every open takes a file lock the pipeline's writer must wait for. So
requests never touch DuckDB: a background task re-reads the recent events (`als_store/sql/serving_user_events.sql`)
every few seconds on one short read-only connection and publishes an immutable in-memory snapshot; a request
looks its user up in the current snapshot. A failed read (the pipeline holds the write lock, no `events` table
yet) keeps the previous snapshot until it is too old, then fold-in is off (popularity) until a read succeeds.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from als_core.bundle import IdIndex
from als_store import sql_files

log = logging.getLogger(__name__)

# Event-type weights: the defaults of the pipeline's `interactions` (pipelines/defs/interactions.py), so a
# folded-in user is weighted as training weighs everybody.
DEFAULT_WEIGHTS = {"view_weight": 3.0, "cart_weight": 10.0, "purchase_weight": 40.0}


@dataclass(frozen=True)
class EventSnapshot:
    """(item ids, summed weights) per user, as read at ``read_at`` (monotonic seconds)."""

    users: IdIndex
    offsets: np.ndarray
    item_ids: np.ndarray
    weights: np.ndarray
    since_day: dt.date | None
    read_at: float
    as_of: str

    @classmethod
    def from_columns(cls, user_ids, item_ids, weights, since_day, read_at: float) -> EventSnapshot:
        user_ids = np.asarray(user_ids).astype(str)
        order = np.argsort(user_ids, kind="stable")  # the SQL sorts already; cheap insurance
        user_ids = user_ids[order]
        unique, starts = np.unique(user_ids, return_index=True)
        return cls(
            users=IdIndex(unique),
            offsets=np.append(starts, len(user_ids)).astype(np.int64),
            item_ids=np.asarray(item_ids).astype(str)[order],
            weights=np.asarray(weights, dtype=np.float32)[order],
            since_day=since_day,
            read_at=read_at,
            as_of=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )

    def __len__(self) -> int:
        return len(self.users)

    def histories(self, user_ids) -> list[tuple[np.ndarray, np.ndarray] | None]:
        rows = self.users.lookup([str(u) for u in user_ids])
        return [None if row < 0 else (self.item_ids[self.offsets[row]:self.offsets[row + 1]],
                                      self.weights[self.offsets[row]:self.offsets[row + 1]])
                for row in rows.tolist()]


class WarehouseEvents:
    """Holds the latest snapshot; `refresh` is called from a background task, `histories` from requests."""

    def __init__(self, duckdb_path: Path, max_age_s: float, lookback_days: int = 3, max_events: int = 500,
                 weights: dict[str, float] | None = None):
        self.duckdb_path = Path(duckdb_path)
        self.max_age_s = float(max_age_s)
        self.lookback_days = int(lookback_days)
        self.max_events = int(max_events)
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self._snapshot: EventSnapshot | None = None
        self.last_error: str | None = None

    def refresh(self, since_day: dt.date | None) -> EventSnapshot | None:
        """Read the events since ``since_day`` (None: the last ``lookback_days`` days with events) and
        publish them. Never raises for warehouse problems: they are logged and kept in ``last_error``."""
        if not self.duckdb_path.exists():
            self._fail(f"warehouse {self.duckdb_path} does not exist (yet)", quiet=True)
            return None
        started = time.monotonic()
        try:
            con = duckdb.connect(str(self.duckdb_path), read_only=True)
        except duckdb.Error as exc:  # typically the pipeline's writer holding the file lock
            self._fail(f"cannot open {self.duckdb_path} read-only: {exc}")
            return None
        try:
            con.execute("SET threads = 1")  # a background read must not take the cores from requests
            columns = sql_files.run(con, "serving_user_events", {
                "since_day": since_day, "lookback_days": self.lookback_days, "max_events": self.max_events,
                **self.weights,
            }).fetchnumpy()
        except duckdb.Error as exc:  # e.g. no `events` table in a fresh warehouse
            self._fail(f"reading recent events from {self.duckdb_path} failed: {exc}")
            return None
        finally:
            con.close()
        snapshot = EventSnapshot.from_columns(columns["user_id"], columns["item_id"], columns["weight"],
                                              since_day, started)
        self._snapshot = snapshot
        self.last_error = None
        log.debug("fold-in snapshot: %d users, %d pairs in %.2fs", len(snapshot), len(snapshot.item_ids),
                  time.monotonic() - started)
        return snapshot

    def _fail(self, message: str, quiet: bool = False) -> None:
        if message != self.last_error:
            (log.info if quiet else log.warning)("fold-in: %s (serving popularity to unknown users)", message)
        self.last_error = message

    @property
    def snapshot(self) -> EventSnapshot | None:
        """The current snapshot, or None when there is none or it is older than ``max_age_s``."""
        snapshot = self._snapshot
        if snapshot is None or time.monotonic() - snapshot.read_at > self.max_age_s:
            return None
        return snapshot

    def histories(self, user_ids) -> list[tuple[np.ndarray, np.ndarray] | None]:
        snapshot = self.snapshot
        return [None] * len(user_ids) if snapshot is None else snapshot.histories(user_ids)

    def status(self) -> dict:
        snapshot = self._snapshot
        return {
            "warehouse": str(self.duckdb_path),
            "users": 0 if snapshot is None else len(snapshot),
            "as_of": None if snapshot is None else snapshot.as_of,
            "since_day": None if snapshot is None or snapshot.since_day is None else str(snapshot.since_day),
            "fresh": self.snapshot is not None,
            "last_error": self.last_error,
        }
