"""Two API replicas on the production profile: separate `python -m serving` processes (one of them with two
uvicorn workers behind its port), each with a home of its own and no warehouse, serving the champion of a
tracking server whose backend store is Postgres. The operator's `python -m pipelines registry promote` and
`rollback` reach every worker of every replica within one poll plus the load."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from als_store import mlflow_store, model_registry
from als_store.model_tags import CHAMPION
from als_store.settings import Settings
from mlflow_server import free_port, stop
from test_serving_api import register_two_versions, start_python_m_serving, wait_for

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 1.0
# One poll interval (the alias may move just after a worker's poll) plus the new version's load: resolving the
# alias, downloading the bundle through the server's artifact proxy and building the scoring state take well
# under a second for these small bundles; the rest is room for a busy two-core machine.
SLACK_S = 2.0
SWITCH_BOUND_S = POLL_S + SLACK_S
START_TIMEOUT_S = 180.0  # the first load compiles numba kernels in each worker process (tens of seconds)
PROBE_EVERY_S = 0.05
PROBE_TIMEOUT_S = 5.0  # one request; a switch is given up on after SWITCH_BOUND_S + 10 s
AFTER_SWITCH_REQUESTS = 20  # fresh connections per replica once it switched: with two workers, either may answer
COMMAND_TIMEOUT_S = 120


@dataclass
class Replica:
    """One `python -m serving` process group on its own port; ``workers`` uvicorn workers share the port."""

    name: str
    port: int
    workers: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def swapped_workers(self, model: str, version: int, was: str) -> set[int]:
        """The process ids whose log says they now serve ``version`` after ``was`` ("nothing" or "v1")."""
        pattern = re.compile(rf"\[(\d+)\]: now serving {re.escape(model)} v{version} \(was {re.escape(was)}\)")
        return {int(pid) for pid in pattern.findall(self.log())}

    def ready(self) -> dict:
        return httpx.get(f"{self.url}/ready", timeout=PROBE_TIMEOUT_S).json()

    def served_version(self) -> int | None:
        """/model on a fresh connection (so that, across calls, every worker of the replica gets asked)."""
        assert self.process.poll() is None, f"replica {self.name} exited:\n{self.log()[-3000:]}"
        try:
            response = httpx.get(f"{self.url}/model", timeout=PROBE_TIMEOUT_S)
        except httpx.TransportError:
            return None
        return response.json()["version"] if response.status_code == 200 else None


@pytest.fixture
def replicas(tmp_path):
    """``start(name, env, workers) -> Replica``; every replica started is stopped (its whole process group)."""
    started: list[Replica] = []

    def start(name: str, env: dict[str, str], workers: int) -> Replica:
        port = free_port()
        log_path = tmp_path / name / "serving.log"
        log_path.parent.mkdir()
        process = start_python_m_serving({**env, "ALS_SERVING_PORT": str(port)}, log_path, "--workers",
                                         str(workers), "--log-level", "info")
        started.append(Replica(name, port, workers, process, log_path))
        return started[-1]

    yield start
    for replica in started:
        stop(replica.process)


def switch_times(replicas: list[Replica], model: str, version: int, was: str, moved_at: float) -> dict[str, float]:
    """Seconds from ``moved_at`` until each replica answers ``version`` and every one of its workers logged the
    swap; then AFTER_SWITCH_REQUESTS fresh requests must all answer ``version``."""
    times: dict[str, float] = {}
    deadline = moved_at + SWITCH_BOUND_S + 10.0
    while len(times) < len(replicas):
        for replica in replicas:
            if replica.name in times:
                continue
            if (replica.served_version() == version
                    and len(replica.swapped_workers(model, version, was)) == replica.workers):
                times[replica.name] = time.monotonic() - moved_at
        late = [replica.name for replica in replicas if replica.name not in times]
        assert not late or time.monotonic() < deadline, f"no switch to v{version} by {late}"
        time.sleep(PROBE_EVERY_S)
    for replica in replicas:
        answers = [replica.served_version() for _ in range(AFTER_SWITCH_REQUESTS)]
        assert answers == [version] * AFTER_SWITCH_REQUESTS, (replica.name, answers)
    return times


def operate(group: list[Replica], env: dict[str, str], model: str, command: str, version: int,
            was: str) -> dict[str, float]:
    """Run `python -m pipelines registry COMMAND` (the operator's path); switch times from the moment the
    champion alias showed ``version``, watched while the command still runs (its exit comes later)."""
    client = mlflow_store.make_client(env["MLFLOW_TRACKING_URI"])
    process = subprocess.Popen([sys.executable, "-m", "pipelines", "registry", *command.split()], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: model_registry.aliases(client, model).get(CHAMPION) == version, COMMAND_TIMEOUT_S,
                 f"`registry {command}` to move the champion alias to v{version}")
        times = switch_times(group, model, version, was, time.monotonic())
    finally:
        try:
            output, _ = process.communicate(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output
    return times


@pytest.mark.slow
def test_two_replicas_switch_to_a_promotion_and_a_rollback_within_a_poll(postgres_mlflow_server, replicas,
                                                                          tmp_path):
    uri = postgres_mlflow_server.uri
    model = f"als-replicas-{uuid.uuid4().hex[:8]}"
    bundles = register_two_versions(uri, model, tmp_path / "unused")  # the server decides where artifacts go
    client = mlflow_store.make_client(uri)
    client.set_registered_model_alias(model, CHAMPION, "1")

    def environment(home: Path) -> dict[str, str]:
        env = {**os.environ, **Settings.build(home, mlflow_tracking_uri=uri, model_name=model).environment(),
               "ALS_SERVING_POLL_SECONDS": str(POLL_S)}
        env.pop("ALS_SERVING_BUNDLE_DIR", None)
        return env

    # homes as on other machines: empty, no warehouse; the tracking URI is all the replicas share
    group = [replicas("one-worker", environment(tmp_path / "home-a"), workers=1),
             replicas("two-workers", environment(tmp_path / "home-b"), workers=2)]
    for replica in group:
        wait_for(lambda: (replica.served_version() == 1
                          and len(replica.swapped_workers(model, 1, "nothing")) == replica.workers),
                 START_TIMEOUT_S, f"replica {replica.name} to serve v1 in each worker")
        # no warehouse on this machine: fold-in says so and unknown users get the most popular items
        wait_for(lambda: "does not exist" in (replica.ready()["fold_in"]["last_error"] or ""), 10,
                 f"replica {replica.name} to find no warehouse")
        assert httpx.get(f"{replica.url}/recommendations/new-user", timeout=PROBE_TIMEOUT_S).json()["source"] \
            == "popularity"
        body = httpx.get(f"{replica.url}/recommendations/1010", params={"n": 5}, timeout=PROBE_TIMEOUT_S).json()
        assert body["source"] == "als" and [e["item_id"] for e in body["recommendations"]] == \
            bundles[1].recommend_many([1010], n=5).items_of(0)[0].tolist()

    operator = environment(tmp_path / "operator")
    promoted = operate(group, operator, model, "promote 2", 2, "v1")
    rolled_back = operate(group, operator, model, "rollback", 1, "v2")

    print(f"after the alias moved ({POLL_S:g} s poll): promotion "
          + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in promoted.items()) + "; rollback "
          + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in rolled_back.items()))
    assert max(promoted.values()) <= SWITCH_BOUND_S, promoted
    assert max(rolled_back.values()) <= SWITCH_BOUND_S, rolled_back
