"""Recent warehouse events of users the served model does not know, for fold-in.

Opening the DuckDB file costs tens of milliseconds and scanning `events` for one user is a full scan (the table
is ordered by day, not by user), and every open takes a file lock the pipeline's writer must wait for. So
requests never touch DuckDB: a background task re-reads the recent events (`als_store/sql/serving_user_events.sql`)
every few seconds on one short read-only connection and publishes an immutable in-memory snapshot; a request
looks its user up in the current snapshot. A failed read (the pipeline holds the write lock, no `events` table
yet) keeps the previous snapshot until it is too old, then fold-in is off (popularity) until a read succeeds.

A snapshot is read for one `EventReading`: the days from the served model's training-window end on, weighted
with the weighting that model was trained with (its bundle's) through the same SQL macro as training
(`als_store/sql/weighted_events.sql`); a half-life counts an event's age from the end of the last day read, as
training counts it from the end of its window's last day. A request uses a snapshot only when it was read for
the model serving it, and a new model is read for at once, so a new user is weighted exactly as training would
have weighted them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from als_core.bundle import IdIndex
from als_core.weighting import DEFAULT_WEIGHTING, EventWeighting
from als_store import sql_files

log = logging.getLogger(__name__)

# A warehouse file whose stamps are younger than this when read may be written again within the same
# timestamp tick: such a read is not trusted to stand for the file's next stamps.
SETTLED_NS = 2_000_000_000


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def file_stamps(path: Path) -> tuple:
    """(inode, size, mtime) of the DuckDB file and of its write-ahead log (None where absent): DuckDB writes a
    commit to one of them, so equal stamps mean unchanged data."""
    stamps = []
    for file in (path, path.with_name(path.name + ".wal")):
        try:
            st = os.stat(file)
        except FileNotFoundError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


@dataclass(frozen=True)
class EventReading:
    """What a snapshot holds: the events from ``since_day`` on (None: the last ``lookback_days`` days with
    events), weighted with ``weighting``. The served model decides both (`serving.service.reading_for`)."""

    since_day: dt.date | None = None
    weighting: EventWeighting = DEFAULT_WEIGHTING


@dataclass(frozen=True)
class EventSnapshot:
    """(item ids, summed weights) per user, as read for ``reading`` at ``read_at`` (monotonic seconds)."""

    users: IdIndex
    offsets: np.ndarray
    item_ids: np.ndarray
    weights: np.ndarray
    reading: EventReading
    read_at: float
    as_of: str

    @classmethod
    def from_columns(cls, user_ids, item_ids, weights, reading: EventReading, read_at: float) -> EventSnapshot:
        user_ids = np.asarray(user_ids).astype(str)
        order = np.argsort(user_ids, kind="stable")  # the SQL sorts already; cheap insurance
        user_ids = user_ids[order]
        unique, starts = np.unique(user_ids, return_index=True)
        return cls(
            users=IdIndex(unique),
            offsets=np.append(starts, len(user_ids)).astype(np.int64),
            item_ids=np.asarray(item_ids).astype(str)[order],
            weights=np.asarray(weights, dtype=np.float32)[order],
            reading=reading,
            read_at=read_at,
            as_of=_utc_now(),
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

    def __init__(self, duckdb_path: Path, max_age_s: float, lookback_days: int = 3, max_events: int = 500):
        self.duckdb_path = Path(duckdb_path)
        self.max_age_s = float(max_age_s)
        self.lookback_days = int(lookback_days)
        self.max_events = int(max_events)
        self._snapshot: EventSnapshot | None = None
        self._last_try: tuple[EventReading, float] | None = None
        self._read_stamps: tuple | None = None  # the warehouse's file stamps when the snapshot was read
        self.last_error: str | None = None

    def due(self, reading: EventReading, every_s: float) -> bool:
        """Whether to read now: ``every_s`` after the last try, at once when the reading changed (a new model,
        with another window or weighting, went live)."""
        last = self._last_try
        return last is None or last[0] != reading or time.monotonic() - last[1] >= every_s

    def refresh(self, reading: EventReading) -> EventSnapshot | None:
        """Read the events ``reading`` says and publish them. Never raises for warehouse problems: they are
        logged and kept in ``last_error``. When the warehouse files are unchanged since the snapshot was read
        for the same ``reading``, that snapshot is republished as read now: the read and rebuild (tens of
        milliseconds, most of it holding the GIL the requests need) are skipped, and so is the file lock."""
        self._last_try = (reading, time.monotonic())
        if not self.duckdb_path.exists():
            self._fail(f"warehouse {self.duckdb_path} does not exist (yet)", quiet=True)
            return None
        started = time.monotonic()
        stamps = file_stamps(self.duckdb_path)
        current = self._snapshot
        if (current is not None and current.reading == reading and stamps == self._read_stamps
                and self.last_error is None):
            self._snapshot = dataclasses.replace(current, read_at=started, as_of=_utc_now())
            return self._snapshot
        settled = all(s is None or time.time_ns() - s[2] > SETTLED_NS for s in stamps)
        try:
            con = duckdb.connect(str(self.duckdb_path), read_only=True)
        except duckdb.Error as exc:  # typically the pipeline's writer holding the file lock
            self._fail(f"cannot open {self.duckdb_path} read-only: {exc}")
            return None
        try:
            con.execute("SET threads = 1")  # a background read must not take the cores from requests
            sql_files.run(con, "weighted_events")  # a temp macro: allowed on a read-only connection
            columns = sql_files.run(con, "serving_user_events", {
                "since_day": reading.since_day, "lookback_days": self.lookback_days, "max_events": self.max_events,
                **reading.weighting.as_dict(),
            }).fetchnumpy()
        except duckdb.Error as exc:  # e.g. no `events` table in a fresh warehouse
            self._fail(f"reading recent events from {self.duckdb_path} failed: {exc}")
            return None
        finally:
            con.close()
        snapshot = EventSnapshot.from_columns(columns["user_id"], columns["item_id"], columns["weight"],
                                              reading, started)
        self._snapshot = snapshot
        self._read_stamps = stamps if settled else None
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

    def histories(self, user_ids, reading: EventReading) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Each user's (item ids, weights) from the current snapshot if it was read for ``reading``, else None
        (a snapshot read for another model's window or weighting is never used)."""
        snapshot = self.snapshot
        if snapshot is None or snapshot.reading != reading:
            return [None] * len(user_ids)
        return snapshot.histories(user_ids)

    def status(self) -> dict:
        snapshot = self._snapshot
        reading = None if snapshot is None else snapshot.reading
        return {
            "warehouse": str(self.duckdb_path),
            "users": 0 if snapshot is None else len(snapshot),
            "as_of": None if snapshot is None else snapshot.as_of,
            "since_day": None if reading is None or reading.since_day is None else str(reading.since_day),
            "weighting": None if reading is None else reading.weighting.as_dict(),
            "fresh": self.snapshot is not None,
            "last_error": self.last_error,
        }
