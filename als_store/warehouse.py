"""Short-lived connections to the DuckDB warehouse file.

DuckDB lets one process write a file at a time (and no reader in another process meanwhile), so
connections are opened per step and closed before long computations; a step that meets the lock
of another process retries for a while instead of failing at once. What must change together runs in
`transaction`. Sessions run in UTC so that
timestamps without an offset mean UTC and offsets are converted, whatever the machine's zone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

DEFAULT_LOCK_TIMEOUT_S = 60.0


def _is_lock_conflict(error: duckdb.Error) -> bool:
    return "lock" in str(error).lower()


def connect(
    path: str | Path,
    *,
    read_only: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    on_wait: Callable[[str], None] | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, waiting up to `lock_timeout_s` for another process's lock."""
    path = Path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"DuckDB warehouse {path} does not exist yet: materialise `events` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_timeout_s
    delay = 0.1
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as error:
            if not _is_lock_conflict(error) or time.monotonic() >= deadline:
                raise
            if on_wait is not None:
                on_wait(f"{path} is locked by another process, retrying in {delay:.1f}s")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    con.execute("SET TimeZone = 'UTC'")
    return con


@contextlib.contextmanager
def open_warehouse(path: str | Path, **kwargs) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, **kwargs)
    try:
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def at_least_threads(con: duckdb.DuckDBPyConnection, threads: int) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run the block with DuckDB's ``threads`` setting raised to ``threads`` when it is lower, and put it back
    after, also when the block raises. The setting belongs to the database instance, not the connection: use it
    around the statements of a step that has the file to itself (its pool keeps other steps out)."""
    (current,) = con.execute("SELECT CAST(current_setting('threads') AS BIGINT)").fetchone()
    if current >= threads:
        yield con
        return
    con.execute(f"SET threads = {int(threads)}")  # SET takes no bound parameter; an int cannot inject
    try:
        yield con
    finally:
        con.execute(f"SET threads = {int(current)}")


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """The block's statements on ``con`` all or none: committed when the block ends, rolled back when it raises
    anything (a Dagster step's interrupt and KeyboardInterrupt included, so a killed step leaves no half)."""
    con.begin()
    try:
        yield con
        con.commit()
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # DuckDB already ended it (a failed write or commit)
            con.rollback()
        raise
