"""The two shipped instance profiles (pipelines/instance.py): embedded sqlite by default, Postgres when
DAGSTER_PG_HOST is set, and the switch between them on an existing home."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipelines.instance import (POSTGRES_CONFIG, POSTGRES_VARIABLES, SHIPPED_CONFIG, InstanceConfigError,
                                open_instance, prepare_dagster_home, profile_config)


def _without_storage(path) -> dict:
    loaded = yaml.safe_load(path.read_text())
    loaded.pop("storage", None)
    return loaded


def test_the_profiles_differ_only_in_storage():
    assert _without_storage(POSTGRES_CONFIG) == _without_storage(SHIPPED_CONFIG)
    assert "storage" not in yaml.safe_load(SHIPPED_CONFIG.read_text())
    postgres = yaml.safe_load(POSTGRES_CONFIG.read_text())["storage"]["postgres"]["postgres_db"]
    assert postgres["scheme"] == "postgresql+psycopg2"
    assert {value["env"] for key, value in postgres.items() if key != "scheme"} == set(POSTGRES_VARIABLES)


def test_the_environment_selects_the_profile_and_names_missing_variables():
    assert profile_config({}) == SHIPPED_CONFIG
    assert profile_config({"DAGSTER_PG_HOST": ""}) == SHIPPED_CONFIG
    full = {"DAGSTER_PG_HOST": "db", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USERNAME": "u",
            "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "dagster"}
    assert profile_config(full) == POSTGRES_CONFIG
    with pytest.raises(InstanceConfigError, match="DAGSTER_PG_PORT, DAGSTER_PG_DB"):
        profile_config({k: v for k, v in full.items() if k not in ("DAGSTER_PG_PORT", "DAGSTER_PG_DB")})


def test_an_unedited_copy_follows_the_profile_and_an_edited_one_is_refused(settings):
    full = {"DAGSTER_PG_HOST": "db", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USERNAME": "u",
            "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "dagster"}
    home = prepare_dagster_home(settings, {})
    config = home / "dagster.yaml"
    assert config.read_text() == SHIPPED_CONFIG.read_text()
    prepare_dagster_home(settings, full)
    assert config.read_text() == POSTGRES_CONFIG.read_text()
    prepare_dagster_home(settings, {})
    assert config.read_text() == SHIPPED_CONFIG.read_text()

    edited = SHIPPED_CONFIG.read_text().replace("max_concurrent_runs: 4", "max_concurrent_runs: 2")
    config.write_text(edited)
    prepare_dagster_home(settings, {})  # an edited copy of the selected profile is kept
    assert config.read_text() == edited
    with pytest.raises(InstanceConfigError, match="edited by hand"):
        prepare_dagster_home(settings, full)
    assert config.read_text() == edited


@pytest.mark.slow
def test_the_production_profile_puts_runs_events_and_pools_in_postgres(production_profile):
    settings = production_profile.settings
    done = subprocess.run([sys.executable, "-m", "pipelines.instance"], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, **production_profile.environment})
    assert done.returncode == 0, done.stderr
    assert "instance profile: production" in done.stderr
    assert done.stdout.strip() == f"export DAGSTER_HOME={settings.dagster_home}"
    with open_instance(settings) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert instance.event_log_storage.supports_global_concurrency_limits
    tables = {row[0] for row in production_profile.cluster.sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", production_profile.dagster_database)}
    assert {"runs", "event_logs", "concurrency_slots", "jobs"} <= tables
