"""A day before the first `events` partition (Taobao's 2017 data without ALS_PIPELINE_START_DATE) fails with one
sentence that says what to set, in Python and in the `dagster` CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from conftest import query

from pipelines.defs.partitions import PartitionBeforeStartError, daily_partitions

ROOT = Path(__file__).resolve().parents[1]
TAOBAO_DAY = "2017-11-24"  # UserBehavior.csv: 2017-11-25 to 2017-12-03 in Beijing, from 2017-11-24 16:00 in UTC


def test_a_day_before_the_first_partition_says_what_to_set(settings, ingest_day):
    with pytest.raises(PartitionBeforeStartError) as failure:
        ingest_day(TAOBAO_DAY, config={"preset": "taobao"})
    message = str(failure.value)
    assert message.startswith(f"{TAOBAO_DAY} is before the first `events` partition 2026-01-01")
    assert f"export ALS_PIPELINE_START_DATE={TAOBAO_DAY}" in message
    assert "ALS_PIPELINE_START_DATE is not set" in message


def test_the_message_gives_the_start_date_that_is_set(monkeypatch):
    monkeypatch.setenv("ALS_PIPELINE_START_DATE", "2017-12-01")
    with pytest.raises(PartitionBeforeStartError, match="ALS_PIPELINE_START_DATE is 2017-12-01"):
        daily_partitions().validate_partition_key(TAOBAO_DAY, context=None)


def test_other_unknown_days_keep_dagsters_error():
    partitions = daily_partitions("2026-01-01")
    with pytest.raises(dg.DagsterUnknownPartitionError):
        partitions.validate_partition_key("2999-01-01", context=None)  # not over yet
    with pytest.raises(dg.DagsterUnknownPartitionError):
        partitions.validate_partition_key("yesterday", context=None)
    partitions.validate_partition_key("2026-01-05", context=None)


@pytest.mark.slow
def test_the_dagster_cli_prints_the_sentence_and_the_start_date_fixes_it(settings):
    from pipelines.instance import dagster_env

    (settings.landing_dir / f"UserBehavior-{TAOBAO_DAY}.csv").write_text(
        "1,2268318,2520377,pv,1511539200\n1,2333346,2520771,buy,1511539201\n"  # 2017-11-24 16:00:00 UTC
    )
    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "pipelines.definitions",
               "--select", "events", "--partition", TAOBAO_DAY]
    env = {**dagster_env(settings), "ALS_PIPELINE_EVENT_PRESET": "taobao"}
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        f"Error: {TAOBAO_DAY} is before the first `events` partition 2026-01-01"
    )
    assert f"export ALS_PIPELINE_START_DATE={TAOBAO_DAY}" in out.stderr

    # what docs/pipelines.md says to set for Taobao
    out = subprocess.run(command, env={**env, "ALS_PIPELINE_START_DATE": TAOBAO_DAY}, cwd=ROOT,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert query(settings, "SELECT user_id, item_id, event_type FROM events ORDER BY source_line") == [
        ("1", "2268318", "view"), ("1", "2333346", "purchase")
    ]
