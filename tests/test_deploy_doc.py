"""docs/deploy.md followed as written: an install that ran the embedded profile (`python -m pipelines.demo`, small)
is switched to the production profile by the doc's own blocks, against a throwaway Postgres cluster
(tests/postgres_server.py), with the values a user chooses set from the cluster. Its blocks say how:

- `skip: your values ...`: the one block of values; replaced by the test's (the same variable names);
- `skip: production services ...`: run in order, as `run` blocks are;
- `skip: a server ...`: started in the background (the MLflow server), until the test ends.

Then the end state: the instance is on Postgres, the champion served from the new store is the old one (same
model files), a retrain on the new profile gated against it, the landing sensor's first tick without a cursor
requests nothing, the embedded run history is where the doc says, and the backups were written.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from doc_blocks import ROOT, ShellBlock, shell_blocks
from mlflow_server import free_port
from test_docs import DocReader

DOC = "docs/deploy.md"
SWITCH = "## Switching a running install to the production profile"
VALUES, COMMANDS, SERVER = "your values", "production services", "a server"
SERVER_START_S = 120.0
EMBEDDED_INSTALL = (".venv/bin/python -m pipelines.demo --events 20000 --days 4 --users 300 --items 100 --sparse-days 0 "
                    "--no-api")


def _kind(block: ShellBlock) -> str | None:
    """What the test does with a block: None for a block it leaves to the reader (another skip reason)."""
    if block.mode == "run":
        return "run"
    if block.mode == "skip":
        for kind in (VALUES, COMMANDS, SERVER):
            if block.argument.startswith(kind):
                return kind
    return None


def _exported_names(text: str) -> list[str]:
    names = []
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        if code.strip().startswith("export "):
            names += re.findall(r"\b([A-Z_][A-Z0-9_]*)=", code)
    return names


def _used_names(text: str) -> set[str]:
    return set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text))


def switch_blocks() -> list[ShellBlock]:
    lines = (ROOT / DOC).read_text().splitlines()
    start = lines.index(SWITCH) + 1
    end = next((i + 1 for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines) + 1)
    return [block for block in shell_blocks(DOC) if start < block.line < end]


def test_the_switch_asks_for_its_values_once_and_then_uses_only_them():
    blocks = switch_blocks()
    values = [block for block in blocks if _kind(block) == VALUES]
    assert len(values) == 1 and blocks.index(values[0]) == 0, "one block of values, before the steps"
    chosen = set(_exported_names(values[0].text))
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB",
            "MLFLOW_TRACKING_URI", "ALS_PIPELINE_HOME"} <= chosen
    steps = [block for block in blocks[1:] if _kind(block) in (COMMANDS, SERVER)]
    assert [_kind(block) for block in steps].count(SERVER) == 1 and len(steps) >= 5
    exported_by_steps = {name for block in steps for name in _exported_names(block.text)}
    for block in steps:
        unknown = _used_names(block.text) - chosen - exported_by_steps
        assert not unknown, f"{block.where} uses {sorted(unknown)}, which the values block does not set"


def _values(postgres, home: Path, workdir: Path, mlflow_port: int) -> tuple[dict[str, str], str]:
    values = {
        "ALS_PIPELINE_HOME": str(home),
        "DAGSTER_PG_HOST": postgres.host, "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USERNAME": postgres.user, "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": f"dagster_{uuid.uuid4().hex[:8]}", "MLFLOW_PG_DB": f"mlflow_{uuid.uuid4().hex[:8]}",
        "MLFLOW_ARTIFACTS": str(workdir / "mlflow-artifacts"),
        "MLFLOW_BIND": "127.0.0.1", "MLFLOW_PORT": str(mlflow_port),
        "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{mlflow_port},localhost:{mlflow_port}",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
    }
    return values, "\n".join(f"export {name}='{value}'" for name, value in values.items())


def _start_in_background(reader: DocReader, block: ShellBlock, health_url: str) -> subprocess.Popen:
    with open(reader.transcript, "a") as log:
        log.write(f"\n### {block.where} (in the background, until {health_url} answers)\n{block.text}\n###\n")
        log.flush()
        process = subprocess.Popen(["bash", "-c", reader._script(block.text)], cwd=ROOT,
                                   env=reader.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{block.where} exited {process.returncode}:\n{reader.tail()}")
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{block.where}: {health_url} did not answer within {SERVER_START_S:.0f}s:\n{reader.tail()}")


@pytest.mark.slow
def test_an_embedded_install_switches_to_the_production_profile_by_the_doc(postgres, tmp_path, monkeypatch):
    from als_store import mlflow_store, model_registry, model_tags

    reader = DocReader(tmp_path)
    for name in list(reader.env):
        if name.startswith("DAGSTER_PG_"):
            del reader.env[name]
    name = f"deploy-{uuid.uuid4().hex[:8]}"
    reader.env["ALS_MODEL_NAME"] = name  # the session's cluster is shared: a model name of this test's own
    reader.run(ShellBlock("the embedded install", 0, "run", "", EMBEDDED_INSTALL))
    old_uri = f"sqlite:///{reader.home / 'mlflow.db'}"
    old = mlflow_store.make_client(old_uri)
    old_champion = model_registry.aliases(old, name)[model_tags.CHAMPION]

    values, exports = _values(postgres, reader.home, tmp_path, free_port())
    for key in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(key, values[key])  # for this process's look at the instance afterwards
    for key, limit in mlflow_store.MLFLOW_HTTP_LIMITS.items():  # a failure says so in seconds
        monkeypatch.setenv(key, str(limit))
    servers: list[subprocess.Popen] = []
    try:
        blocks = shell_blocks(DOC)
        assert any(_kind(block) == VALUES for block in blocks)
        for block in blocks:
            kind = _kind(block)
            if kind == VALUES:
                assert set(_exported_names(block.text)) == set(values), "the doc's values are the test's"
                reader.run(ShellBlock(block.doc, block.line, "run", "", exports))
            elif kind == SERVER:
                servers.append(_start_in_background(reader, block, f"{values['MLFLOW_TRACKING_URI']}/health"))
            elif kind in ("run", COMMANDS):
                reader.run(block)
        check_end_state(reader, values, name, old_uri, old_champion)
    finally:
        for server in servers:
            try:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)


def check_end_state(reader: DocReader, values: dict[str, str], name: str, old_uri: str, old_champion: int) -> None:
    """What the switch must leave: asserted while the doc's MLflow server still runs."""
    import dagster as dg

    from als_store import mlflow_store, model_registry, model_tags
    from als_store.settings import Settings
    from conftest import evaluate_landing_sensor
    from pipelines.instance import open_instance
    from pipelines.registry import transfer
    from test_champion_copy import assert_same_bundle

    transcript = reader.transcript.read_text()
    where = (f"{values['DAGSTER_PG_USERNAME']}@{values['DAGSTER_PG_HOST']}:{values['DAGSTER_PG_PORT']}/"
             f"{values['DAGSTER_PG_DB']}")
    assert f"instance profile: production (Dagster storage in Postgres {where})" in transcript
    assert f"Dagster instance profile: production (Dagster storage in Postgres {where})" in transcript
    settings = Settings.build(reader.home, None, values["MLFLOW_TRACKING_URI"], name)

    # the champion the new store served before the retrain is a copy of the old champion: the same model files
    [served] = re.findall(rf"Champion: {name} v(\d+) ", transcript)
    new = mlflow_store.make_client(settings.mlflow_tracking_uri)
    copy = model_registry.get_version(new, name, int(served))
    assert copy.tags[transfer.TAG_COPIED_FROM_VERSION] == str(old_champion)
    assert copy.tags[transfer.TAG_COPIED_FROM_URI] == old_uri
    assert_same_bundle(model_registry.load_bundle(settings.mlflow_tracking_uri, name, copy.version),
                       model_registry.load_bundle(old_uri, name, old_champion))
    assert f"copied champion v{old_champion} from {old_uri} -> v{copy.version}" in transcript

    # the retrain on the new profile (step 8) gated its challenger against the carried champion
    challenger = model_registry.find_version(new, name)
    assert transfer.TAG_COPIED_FROM_VERSION not in challenger.tags
    assert challenger.tags[model_tags.TAG_GATE_CHAMPION_VERSION] == str(copy.version)
    assert challenger.tags[model_tags.TAG_GATE_RULE] == "beats_champion"
    assert model_tags.tag_float(challenger.tags[model_tags.TAG_GATE_CHAMPION_NDCG]) is not None

    with open_instance(settings) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        [retrain] = instance.get_runs()
        assert (retrain.job_name, retrain.status.value) == ("daily_retrain", "SUCCESS")
        # what the doc says of the landing sensor's first tick without a cursor: every day is ingested, no run
        tick = evaluate_landing_sensor(settings, instance)
        assert tick.run_requests == [] and tick.cursor
    # the embedded run history, kept where the doc says
    with dg.DagsterInstance.from_config(str(reader.home / "dagster-embedded")) as history:
        assert type(history.run_storage).__name__ == "SqliteRunStorage"
        assert {run.job_name for run in history.get_runs()} == {"ingest", "daily_retrain"}
    backups = reader.home / "backup"
    assert [p.suffix for p in backups.glob("warehouse-*.duckdb")] == [".duckdb"]
    assert (backups / "dagster.dump").stat().st_size > 0 and (backups / "mlflow.dump").stat().st_size > 0
