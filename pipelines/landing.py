"""The landing directory: which files belong to which day, and synthetic files to fill it.

Convention (see docs/pipelines.md): a file belongs to the day written as YYYY-MM-DD in its file
name (`events-2026-01-05.csv.gz`), or else in the nearest directory above it
(`2026-01-05/part-0.parquet`). Formats by suffix: .csv, .jsonl / .ndjson / .json (one object per
line), each optionally .gz, and .parquet. Names starting with '.' or '_' are writes in progress
and are ignored: writers land a file under such a name and rename it when complete.

    python -m pipelines.landing --days 14 --events 200000 --format csv.gz
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from als_store.settings import Settings

_DATE = re.compile(r"(?<!\d)(\d{4}-\d{2}-\d{2})(?!\d)")
_FORMATS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson": "jsonl",
    ".ndjson.gz": "jsonl",
    ".json": "jsonl",
    ".json.gz": "jsonl",
    ".parquet": "parquet",
}
WRITE_FORMATS = ("csv", "csv.gz", "jsonl", "jsonl.gz", "parquet")


@dataclass(frozen=True)
class LandingFile:
    path: Path
    relative: str  # path under the landing dir, POSIX separators: what `events.source_file` keeps
    day: dt.date
    format: str  # csv | jsonl | parquet


def file_format(name: str) -> str | None:
    lower = name.lower()
    for suffix, fmt in sorted(_FORMATS.items(), key=lambda item: -len(item[0])):
        if lower.endswith(suffix):
            return fmt
    return None


def _date_in(text: str) -> dt.date | None:
    for candidate in reversed(_DATE.findall(text)):
        try:
            return dt.date.fromisoformat(candidate)
        except ValueError:  # 2026-13-45 looks like a date but is not one
            continue
    return None


def day_of(relative: Path) -> dt.date | None:
    """The file name's date, else the nearest directory's; None when there is none."""
    for part in reversed(relative.parts):
        day = _date_in(part)
        if day is not None:
            return day
    return None


def landing_files(landing_dir: Path) -> list[LandingFile]:
    """Every complete, dated landing file, sorted by relative path."""
    if not landing_dir.is_dir():
        return []
    found = []
    for path in landing_dir.rglob("*"):
        relative = path.relative_to(landing_dir)
        if any(part.startswith((".", "_")) for part in relative.parts) or not path.is_file():
            continue
        fmt = file_format(path.name)
        day = day_of(relative)
        if fmt is not None and day is not None:
            found.append(LandingFile(path=path, relative=relative.as_posix(), day=day, format=fmt))
    return sorted(found, key=lambda f: f.relative)


def files_for_day(landing_dir: Path, day: dt.date) -> list[LandingFile]:
    return [f for f in landing_files(landing_dir) if f.day == day]


# --------------------------------------------------------------------------- synthetic files


def write_day_files(events: pd.DataFrame, landing_dir: Path, fmt: str = "csv.gz", prefix: str = "events") -> list[Path]:
    """One file per day of `events` (user_id, item_id, event_type, ts), named `<prefix>-<day>.<fmt>`.

    Each file is written under a hidden name and renamed when complete, so a sensor or a
    concurrent ingest never reads half a file.
    """
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"format must be one of {WRITE_FORMATS}, got {fmt!r}")
    missing = {"user_id", "item_id", "event_type", "ts"} - set(events.columns)
    if missing:
        raise ValueError(f"events lack columns {sorted(missing)}")
    landing_dir.mkdir(parents=True, exist_ok=True)
    frame = events[["user_id", "item_id", "event_type", "ts"]]
    written = []
    for day, rows in frame.groupby(frame["ts"].dt.date, sort=True):
        target = landing_dir / f"{prefix}-{day.isoformat()}.{fmt}"
        partial = landing_dir / f".{target.name}.partial"
        if fmt.startswith("csv"):
            rows.to_csv(partial, index=False, compression="gzip" if fmt.endswith(".gz") else None)
        elif fmt.startswith("jsonl"):
            rows.to_json(
                partial, orient="records", lines=True, date_format="iso", date_unit="us",
                compression="gzip" if fmt.endswith(".gz") else None,
            )
        else:
            rows.to_parquet(partial, index=False)
        os.replace(partial, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    from als_core.synthetic import generate_events  # pandas-heavy; only the CLI needs it

    parser = argparse.ArgumentParser(description="Write synthetic landing files, one per day.")
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--start", default="2026-01-01")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=WRITE_FORMATS, default="csv.gz")
    parser.add_argument("--landing", type=Path, default=None, help="default: Settings.landing_dir")
    args = parser.parse_args(argv)
    landing = args.landing or Settings.from_env().landing_dir
    events = generate_events(args.users, args.items, args.events, args.days, seed=args.seed, start=args.start)
    for path in write_day_files(events, landing, args.format):
        print(path)


if __name__ == "__main__":
    main()
