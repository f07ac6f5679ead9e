"""docs/deploy.md followed as written: an install that ran the embedded profile (`python -m pipelines.demo`, small)
is switched to the production profile by the doc's own blocks, against a throwaway Postgres cluster
(tests/postgres_server.py), with the values a user chooses set from the cluster. Its blocks say how:

- `skip: your values ...`: the one block of values; replaced by the test's (the same variable names);
- `skip: production services ...`: run in order, as `run` blocks are;
- `skip: a server ...`: started in the background (the MLflow server), until the test ends.

Then the end state: the instance is on Postgres, the champion served from the new store is the old one (same
model files), a retrain on the new profile gated against it, the landing sensor's first tick without a cursor
requests nothing, the embedded run history is where the doc says, and the backups were written. Last, step 7's
processes (code server, webserver, daemon, API) on 127.0.0.1 with the doc's workspace file: the location loads
over gRPC with its schedules and sensor running, the daemon's first sensor tick requests nothing, a run
launched through the queue succeeds, and the API serves the new store's champion.
"""

from __future__ import annotations

import os
import re
import signal
import socket
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
EMBEDDED_INSTALL = (".venv/bin/python -m pipelines.demo --events 20000 --days 4 --users 300 --items 100 "
                    "--sparse-days 0 --no-api")


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


def _start_in_background(reader: DocReader, block: ShellBlock, health_url: str | None) -> subprocess.Popen:
    """Start the block's command as a server in its own process group; wait until ``health_url`` answers 200
    (None: do not wait)."""
    with open(reader.transcript, "a") as log:
        log.write(f"\n### {block.where} (in the background, until {health_url} answers)\n{block.text}\n###\n")
        log.flush()
        process = subprocess.Popen(["bash", "-c", reader._script(block.text)], cwd=ROOT,
                                   env=reader.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    if health_url is not None:
        _wait_for(lambda: _answers_200(health_url), f"{block.where}: {health_url} to answer", reader, process)
    return process


def _answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(condition, what: str, reader: DocReader, process: subprocess.Popen | None = None,
              timeout_s: float = SERVER_START_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"exited {process.returncode} before {what}:\n{reader.tail()}")
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}:\n{reader.tail()}")


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
        check_the_processes(reader, values, name, servers)
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


WORKSPACE_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus locationOrLoadError {
  __typename ... on RepositoryLocation { repositories { schedules { name scheduleState { status } }
  sensors { name sensorState { status } } } } ... on PythonError { message } } } } } }"""


def _step_7(reader: DocReader, code_port: int, web_port: int, api_port: int) -> list[ShellBlock]:
    """Step 7's processes, one block per line, on 127.0.0.1 and free ports, with the doc's workspace file
    (written to the test's directory, the host and port of its code server)."""
    import yaml

    text = (ROOT / DOC).read_text()
    [workspace] = re.findall(r"`workspace.production.yaml`.*?```yaml\n(.*?)```", text, re.S)
    loaded = yaml.safe_load(workspace)
    loaded["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=code_port)
    path = reader.workdir / "workspace.production.yaml"
    path.write_text(yaml.safe_dump(loaded))
    [block] = [b for b in switch_blocks() if "code-server start" in b.text]
    replaced = block.text
    for old, new in ((" -h 0.0.0.0 -p 4000", f" -h 127.0.0.1 -p {code_port}"),
                     (" -h 0.0.0.0 -p 3000", f" -h 127.0.0.1 -p {web_port}"),
                     ("--host 0.0.0.0 --workers 4", f"--host 127.0.0.1 --port {api_port} --workers 1")):
        assert replaced.count(old) == 1, f"step 7 changed: {old!r} not found once"
        replaced = replaced.replace(old, new)
    replaced = replaced.replace("workspace.production.yaml", str(path))
    return [ShellBlock(block.doc, block.line, "skip", "", line) for line in replaced.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def check_the_processes(reader: DocReader, values: dict[str, str], name: str, servers: list) -> None:
    """Step 7's code server, daemon, webserver and API on the production instance: the location loads with its
    schedules and sensor running, the daemon's first sensor tick requests nothing, a run launched through the
    queue runs (the daemon hands it to the code server), and the API serves the new store's champion."""
    from als_store import mlflow_store, model_registry, model_tags
    from als_store.settings import Settings
    from pipelines.instance import open_instance

    code_port, web_port, api_port = free_port(), free_port(), free_port()
    code_server, daemon, webserver, api = _step_7(reader, code_port, web_port, api_port)
    servers.append(_start_in_background(reader, code_server, None))
    _wait_for(lambda: _listens(code_port), "the code server to listen", reader, servers[-1])  # "first", says step 7
    servers.append(_start_in_background(reader, webserver, f"http://127.0.0.1:{web_port}/server_info"))

    def location():
        answer = httpx.post(f"http://127.0.0.1:{web_port}/graphql", json={"query": WORKSPACE_QUERY}, timeout=30)
        [entry] = answer.json()["data"]["workspaceOrError"]["locationEntries"]
        return entry if entry["loadStatus"] == "LOADED" else None

    def loaded_location():
        entry = location()
        assert entry is None or entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
        return entry

    entry = _wait_for(loaded_location, "the code location to load in the webserver", reader, servers[0])
    assert entry["name"] == "pipelines.definitions", entry
    [repository] = entry["locationOrLoadError"]["repositories"]
    states = {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]}
    states.update({s["name"]: s["sensorState"]["status"] for s in repository["sensors"]})
    assert set(states) == {"ingest_daily", "daily_retrain_schedule", "tune_hyperparameters_schedule",
                           "landing_sensor"} and set(states.values()) == {"RUNNING"}, states

    settings = Settings.build(reader.home, None, values["MLFLOW_TRACKING_URI"], name)
    servers.append(_start_in_background(reader, daemon, None))
    with open_instance(settings) as instance:
        def first_sensor_tick():
            found = [s for s in instance.all_instigator_state() if s.instigator_name == "landing_sensor"]
            ticks = instance.get_ticks(found[0].instigator_origin_id, found[0].selector_id) if found else []
            return [t for t in ticks if t.status.value != "STARTED"]

        [tick] = _wait_for(first_sensor_tick, "the daemon's first landing_sensor tick", reader, servers[-1])
        assert (tick.status.value, tick.run_ids) == ("SKIPPED", []), tick
        before = {run.run_id for run in instance.get_runs()}
        launched = subprocess.run([str(ROOT / ".venv/bin/dagster"), "job", "launch", "-w",
                                   str(reader.workdir / "workspace.production.yaml"), "-j", "daily_retrain"],
                                  env={**reader.env, **values, "DAGSTER_HOME": str(settings.dagster_home)}, cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
        assert launched.returncode == 0, launched.stderr
        [run_id] = _wait_for(lambda: {run.run_id for run in instance.get_runs()} - before, "the launched run", reader)
        finished = _wait_for(lambda: (run := instance.get_run_by_id(run_id)) and run.is_finished and run,
                             "the launched run to finish", reader, servers[-1], timeout_s=300)
        assert finished.status.value == "SUCCESS"

    servers.append(_start_in_background(reader, api, f"http://127.0.0.1:{api_port}/ready"))
    champion = model_registry.aliases(mlflow_store.make_client(settings.mlflow_tracking_uri), name)[model_tags.CHAMPION]
    model = httpx.get(f"http://127.0.0.1:{api_port}/model", timeout=10).json()
    assert (model["name"], model["version"]) == (name, champion)
