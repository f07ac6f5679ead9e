"""Faults whose cause is easy to lose on the way to the operator: a line over DuckDB's maximum size, a
non-UTF-8 row's raw text, a truncated .gz, a corrupt Parquet file, a warehouse that cannot be written (a full
disk)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap

import pytest
from conftest import query

from pipelines.event_ingest import LandingFileError

DAY = "2026-01-05"
HEADER = "user_id,item_id,event_type,ts\n"
THREE = HEADER + "u1,i1,view,2026-01-05 08:00:00\nu2,i2,cart,2026-01-05 09:00:00\nu3,i3,view,2026-01-05 10:00:00\n"
LONG = 3_000_000  # DuckDB's max_line_size is 2,000,000 bytes


def _rejects(settings) -> list[tuple]:
    return query(settings, "SELECT source_line, reason, detail, raw FROM rejected_events ORDER BY source_file, source_line")


def _events(settings) -> list[tuple]:
    return query(settings, "SELECT source_file, source_line, user_id FROM events ORDER BY source_file, source_line")


@pytest.mark.parametrize("compressed", [False, True])
def test_a_line_over_the_maximum_size_keeps_its_cause_and_its_start(settings, ingest_day, compressed):
    body = (HEADER + "u1,i1,view,2026-01-05 08:00:00\nu2," + "x" * LONG + ",view,2026-01-05 09:00:00\n"
            "u3,i3,cart,2026-01-05 10:00:00\n").encode()
    name = f"events-{DAY}.csv" + (".gz" if compressed else "")
    (settings.landing_dir / name).write_bytes(gzip.compress(body) if compressed else body)
    ingest_day(DAY)

    [(line, reason, detail, raw)] = _rejects(settings)
    assert (line, reason) == (3, "malformed row")
    assert detail.startswith("LINE SIZE OVER MAXIMUM: Maximum line size of 2000000 bytes exceeded")
    assert raw.startswith("u2,xxxx") and len(raw) >= 1000  # what DuckDB keeps of it
    assert _events(settings) == [(name, 2, "u1"), (name, 4, "u3")]


def test_a_json_line_over_the_maximum_size_keeps_its_cause(settings, ingest_day):
    lines = [{"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "2026-01-05 08:00:00"},
             {"user_id": "u2", "item_id": "x" * LONG, "event_type": "view", "ts": "2026-01-05 09:00:00"},
             {"user_id": "u3", "item_id": "i3", "event_type": "view", "ts": "2026-01-05 10:00:00"},
             {"user_id": "u4", "item_id": "i4", "event_type": "view", "ts": "2026-01-05 11:00:00"},
             {"user_id": "u5", "item_id": "i5", "event_type": "view", "ts": "2026-01-05 12:00:00"}]
    text = [json.dumps(x) for x in lines]
    text[3] = text[3].replace("i4", "i\x1f4")  # a raw control character: not JSON, and the reader sets it aside
    (settings.landing_dir / f"events-{DAY}.jsonl").write_text("".join(line + "\n" for line in text))
    ingest_day(DAY)
    rejects = _rejects(settings)
    assert [(line, reason) for line, reason, _, _ in rejects] == [(2, "malformed row"), (4, "malformed row")]
    assert rejects[0][2].startswith("LINE SIZE OVER MAXIMUM") and rejects[0][3].startswith('{"user_id": "u2"')
    assert rejects[1][2:] == ("not a JSON object", text[3])
    # the lines after the set-aside ones keep their numbers
    assert [row[1:] for row in _events(settings)] == [(1, "u1"), (3, "u3"), (5, "u5")]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("compressed", [False, True])
def test_the_raw_copy_of_a_non_utf8_row_keeps_every_byte_and_comma(settings, ingest_day, newline, compressed):
    rows = [b"user_id,item_id,event_type,ts", b"u1,i1,view,2026-01-05 08:00:00",
            b"u2\xff,i2,view,2026-01-05 09:00:00",  # the bad byte just before a comma
            b"u3,i\xe9,view,2026-01-05 09:30:00",  # a Latin-1 e-acute: a UTF-8 lead byte that eats the comma
            b"u4,i4,cart,2026-01-05 10:00:00"]
    body = newline.encode().join(rows) + newline.encode()
    name = f"events-{DAY}.csv" + (".gz" if compressed else "")
    (settings.landing_dir / name).write_bytes(gzip.compress(body) if compressed else body)
    ingest_day(DAY)

    rejects = _rejects(settings)
    assert [(line, reason) for line, reason, _, _ in rejects] == [(3, "malformed row"), (4, "malformed row")]
    assert all(detail.startswith("INVALID ENCODING") for _, _, detail, _ in rejects)
    # bytes that are not UTF-8 are written as \xNN; nothing else of the line is lost
    assert [raw for *_, raw in rejects] == ["u2\\xff,i2,view,2026-01-05 09:00:00", "u3,i\\xe9,view,2026-01-05 09:30:00"]
    assert [row[1:] for row in _events(settings)] == [(2, "u1"), (5, "u4")]


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        (f"events-{DAY}.csv.gz", lambda data: data[: len(data) // 2]),  # cut short: EOFError before
        (f"events-{DAY}.jsonl.gz", lambda data: data[:10] + b"\x00" * 20 + data[30:]),  # corrupt deflate data
        (f"events-{DAY}.csv.gz", lambda data: b"not gzip at all\n"),
    ],
)
def test_a_truncated_or_corrupt_gzip_names_the_file_and_keeps_the_day(settings, ingest_day, name, damage):
    (settings.landing_dir / f"a-{DAY}.csv").write_text(THREE)
    ingest_day(DAY)
    before = (_events(settings), query(settings, "SELECT source_file, rows_loaded FROM ingested_files"))
    rows = "".join(f"u{n},i{n},view,2026-01-05 11:00:00\n" for n in range(5000))
    (settings.landing_dir / name).write_bytes(damage(gzip.compress((HEADER + rows).encode())))

    with pytest.raises(LandingFileError, match=rf"{name}: truncated or corrupt gzip file") as failure:
        ingest_day(DAY)
    assert f"{DAY} was kept as it was" in str(failure.value)
    assert (_events(settings), query(settings, "SELECT source_file, rows_loaded FROM ingested_files")) == before


def test_a_corrupt_parquet_file_names_the_file_and_keeps_the_day(settings, ingest_day):
    (settings.landing_dir / f"a-{DAY}.csv").write_text(THREE)
    ingest_day(DAY)
    before = _events(settings)
    (settings.landing_dir / f"b-{DAY}.parquet").write_bytes(b"PAR1" + b"\x00" * 100)

    with pytest.raises(LandingFileError, match=rf"b-{DAY}\.parquet: not a readable Parquet file") as failure:
        ingest_day(DAY)
    assert f"{DAY} was kept as it was" in str(failure.value)
    assert _events(settings) == before


# The child materialises `events` with a file-size limit on its own writes (RLIMIT_FSIZE, which any user
# may lower): DuckDB's write of the warehouse fails with the same IOException as on a full disk
# ("No space left on device" there, "File too large" here).
_CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    import dagster as dg
    from pipelines.defs.ingest import build_events_asset
    from pipelines.defs.partitions import daily_partitions
    from als_store.settings import Settings
    from pipelines.defs.resources import DuckDBResource, PipelineSettings

    home, day, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pipeline = PipelineSettings.of(Settings.build(home))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    result = dg.materialize([build_events_asset(daily_partitions("2026-01-01"))], partition_key=day,
                            resources={"pipeline": pipeline, "duckdb": DuckDBResource(pipeline=pipeline)},
                            raise_on_error=False)
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    print("FAILURE:", error.message if error.cause is None else error.cause.message)
    """
)


@pytest.mark.slow
def test_a_warehouse_that_cannot_be_written_says_so_and_keeps_the_day(settings, ingest_day):
    from als_core.synthetic import generate_events
    from pipelines.landing import write_day_files

    (settings.landing_dir / f"events-{DAY}.csv").write_text(THREE)
    ingest_day(DAY)
    before = _events(settings)
    (settings.landing_dir / f"events-{DAY}.csv").unlink()
    write_day_files(generate_events(20_000, 5_000, 200_000, 1, seed=0, start=DAY), settings.landing_dir, "csv.gz")

    limit = settings.duckdb_path.stat().st_size + 64 * 1024
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(settings.home), DAY, str(limit)],
        capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    [message] = [line for line in child.stdout.splitlines() if line.startswith("FAILURE:")]
    assert str(settings.duckdb_path) in message
    assert "the disk may be full" in message.lower() and f"{DAY} was kept as it was" in message
    assert "File too large" in message  # DuckDB's own words stay in the message
    assert _events(settings) == before  # the warehouse opens and holds the day as it was
