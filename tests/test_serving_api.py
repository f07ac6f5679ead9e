"""The API end to end: uvicorn on 127.0.0.1, models registered in a real MLflow sqlite store (and, for the
unreachable case, a real `mlflow server`), fold-in events in a real DuckDB file."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.sparse as sp
import uvicorn

from als_core import ALS
from als_core.bundle import ModelBundle
from mlflow_server import _mlflow_executable, free_port, stop, wait_healthy
from als_store import mlflow_store, model_tags
from pipelines.registry import promotion, registration, run_log
from serving.app import create_app
from serving.config import ServingConfig
from test_serving_fold_in import write_events

MODEL = "als-serving-test"
WINDOW = ["2026-01-01", "2026-01-10"]
START_TIMEOUT_S = 30.0


def trained_bundle(seed: int, factors: int) -> ModelBundle:
    rng = np.random.default_rng(seed)
    train = sp.random(80, 60, density=0.15, format="csr", dtype=np.float32, random_state=seed)
    train.data[:] = rng.choice([3.0, 10.0, 40.0], train.nnz)
    model = ALS(factors=factors, iterations=5, regularization=0.05, random_state=seed).fit(train)
    return ModelBundle.build(model, np.arange(80) + 1000, np.arange(60) + 5000, train,
                             metadata={"training_window": WINDOW, "seed": seed})


def register_two_versions(uri: str, model: str, artifact_root: Path) -> dict[int, ModelBundle]:
    """Versions 1 and 2 of ``model`` (different seeds and sizes, so different answers), registered as the
    pipeline registers them; {version: bundle}."""
    client = mlflow_store.make_client(uri)
    experiment = run_log.ensure_experiment(client, "serving-tests", artifact_root)
    bundles = {}
    for seed, factors, ndcg in [(1, 8, 0.21), (2, 5, 0.27)]:
        bundle = trained_bundle(seed, factors)
        run_id = run_log.start_training_run(client, experiment, f"seed {seed}", {})
        with tempfile.TemporaryDirectory() as tmp:
            ref = registration.register_bundle(uri, run_id, model, bundle.save(Path(tmp) / "bundle"),
                                               bundle.user_ids[:2], {model_tags.TAG_EVAL_CHALLENGER_NDCG: repr(ndcg)})
        run_log.finish_run(client, run_id)
        bundles[ref.version] = bundle
    return bundles


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its tables takes seconds) with versions 1 and 2 of MODEL."""
    root = tmp_path_factory.mktemp("serving-mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    bundles = register_two_versions(uri, MODEL, root / "mlartifacts")
    return {"uri": uri, "root": root, "client": mlflow_store.make_client(uri), "bundles": bundles}


def set_champion(store, version: int | None) -> None:
    client = store["client"]
    if version is None:
        with contextlib.suppress(Exception):
            client.delete_registered_model_alias(MODEL, model_tags.CHAMPION)
    else:
        client.set_registered_model_alias(MODEL, model_tags.CHAMPION, str(version))


@contextlib.contextmanager
def serving(config: ServingConfig) -> Iterator[httpx.Client]:
    """The app under a real uvicorn server on a free 127.0.0.1 port, in a thread; stopped on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def config_for(store, tmp_path, **overrides) -> ServingConfig:
    values = dict(model_name=MODEL, tracking_uri=store["uri"], duckdb_path=tmp_path / "warehouse.duckdb",
                  poll_seconds=0.2, fold_in_refresh_seconds=0.2, max_n=50, max_batch=20)
    values.update(overrides)
    return ServingConfig(**values)


def served_version(client: httpx.Client) -> int | None:
    response = client.get("/model")
    return response.json()["version"] if response.status_code == 200 else None


def items_of(payload: dict) -> list:
    return [entry["item_id"] for entry in payload["recommendations"]]


def test_no_champion_then_a_champion_and_every_endpoint(store, tmp_path):
    set_champion(store, None)
    bundle = store["bundles"][1]
    new_user_items = [str(bundle.item_ids[3]), str(bundle.item_ids[7]), str(bundle.item_ids[7])]
    write_events(tmp_path / "warehouse.duckdb", [
        ("777777", new_user_items[0], "view", "2026-01-11 08:00:00"),   # after the model's window: folded in
        ("777777", new_user_items[1], "purchase", "2026-01-11 08:05:00"),
        ("777777", new_user_items[2], "view", "2026-01-12 08:05:00"),
        ("888888", new_user_items[0], "purchase", "2026-01-02 08:00:00"),  # inside the window: not read
    ])
    with serving(config_for(store, tmp_path)) as api:
        ready = api.get("/ready")
        assert ready.status_code == 503 and "champion" in ready.json()["reason"]
        assert ready.headers["retry-after"]
        response = api.get("/recommendations/1000")
        assert response.status_code == 503 and "champion" in response.json()["detail"]
        assert api.get("/model").status_code == 503
        assert api.get("/health").json() == {"status": "ok"}

        set_champion(store, 1)
        wait_for(lambda: api.get("/ready").status_code == 200, 20, "the first champion to load")
        assert api.get("/ready").json()["model"] == {"name": MODEL, "version": 1}

        # a known user: ALS, best first, nothing already seen, exactly the bundle's answer
        body = api.get("/recommendations/1003", params={"n": 7}).json()
        assert body["source"] == "als" and body["model"] == {"name": MODEL, "version": 1}
        reference = bundle.recommend_many([1003], n=7)
        ref_ids, ref_scores = reference.items_of(0)
        assert items_of(body) == ref_ids.tolist()
        np.testing.assert_allclose([e["score"] for e in body["recommendations"]], ref_scores, rtol=1e-5)
        seen = set(bundle.item_ids[bundle.seen[bundle.users.lookup([1003])[0]].indices].tolist())
        assert seen and not seen & set(items_of(body))

        # unknown users: popularity, the same list for all
        stranger = api.get("/recommendations/no-such-user", params={"n": 5}).json()
        assert stranger["source"] == "popularity" and len(stranger["recommendations"]) == 5
        assert items_of(stranger) == bundle.recommend_many(["no-such-user"], n=5).items_of(0)[0].tolist()
        assert api.get("/recommendations/888888", params={"n": 5}).json()["source"] == "popularity"

        # a new user with fresh warehouse events: folded in, their items excluded, equal to the bundle's fold-in
        wait_for(lambda: api.get("/recommendations/777777").json()["source"] == "fold_in", 10, "fold-in snapshot")
        folded = api.get("/recommendations/777777", params={"n": 10}).json()
        weights = {new_user_items[0]: 3.0, new_user_items[1]: 40.0 + 3.0}
        ref_ids, _, source = bundle.fold_in(list(weights), list(weights.values()), n=10)
        assert source == "fold_in" and items_of(folded) == ref_ids.tolist()
        assert not {int(i) for i in new_user_items} & set(items_of(folded))
        assert api.get("/ready").json()["fold_in"]["users"] == 1

        # batch: order kept, each user routed as above, ids echoed as sent
        batch = api.post("/recommendations/batch", json={"user_ids": [1003, "1003", "no-such-user", "777777"], "n": 7})
        assert batch.status_code == 200
        results = batch.json()["results"]
        assert [r["user_id"] for r in results] == [1003, "1003", "no-such-user", "777777"]
        assert [r["source"] for r in results] == ["als", "als", "popularity", "fold_in"]
        assert items_of(results[0]) == items_of(body) == items_of(results[1])
        assert api.post("/recommendations/batch", json={"user_ids": list(range(21))}).status_code == 422
        assert api.post("/recommendations/batch", json={"user_ids": []}).status_code == 422

        # similar items: cosine neighbours without the item itself; unknown item: 404 with a message
        similar = api.get(f"/similar-items/{bundle.item_ids[4]}", params={"n": 6}).json()
        ref_ids, _ = bundle.similar_items(bundle.item_ids[4], 6)
        assert [e["item_id"] for e in similar["similar_items"]] == ref_ids.tolist()
        missing = api.get("/similar-items/424242")
        assert missing.status_code == 404 and "424242" in missing.json()["detail"]

        info = api.get("/model").json()
        assert (info["name"], info["version"], info["source"]) == (MODEL, 1, "mlflow")
        assert info["ndcg_at_10"] == pytest.approx(0.21)
        assert (info["n_users"], info["n_items"], info["n_interactions"]) == (80, 60, int(bundle.seen.nnz))
        assert info["training_window_end"] == WINDOW[1] and info["trained_at"] and info["run_id"]

        # bad input is a 422, never a 5xx
        for path in ("/recommendations/1003?n=0", "/recommendations/1003?n=51", "/recommendations/1003?n=x",
                     "/recommendations/" + "u" * 129, "/recommendations/bad%20id", "/similar-items/5004?n=-1"):
            assert api.get(path).status_code == 422, path


def test_moving_the_alias_switches_within_a_poll_and_rollback_switches_back(store, tmp_path):
    set_champion(store, 1)
    config = config_for(store, tmp_path, fold_in=False)
    v1, v2 = store["bundles"][1], store["bundles"][2]
    expected = {version: b.recommend_many([1010], n=5).items_of(0)[0].tolist() for version, b in ((1, v1), (2, v2))}
    assert expected[1] != expected[2]
    with serving(config) as api:
        wait_for(lambda: served_version(api) == 1, 20, "v1")
        assert items_of(api.get("/recommendations/1010", params={"n": 5}).json()) == expected[1]

        set_champion(store, 2)
        switch_s = wait_for(lambda: served_version(api) == 2, 10, "the switch to v2")
        body = api.get("/recommendations/1010", params={"n": 5}).json()
        assert body["model"]["version"] == 2 and items_of(body) == expected[2]

        set_champion(store, 1)  # rollback
        back_s = wait_for(lambda: served_version(api) == 1, 10, "the rollback to v1")
        assert items_of(api.get("/recommendations/1010", params={"n": 5}).json()) == expected[1]
        print(f"switch {switch_s:.2f}s, rollback {back_s:.2f}s with a {config.poll_seconds}s poll")

        # a version that cannot be loaded: logged, /ready says so, the old model keeps serving
        client = store["client"]
        broken = client.create_model_version(MODEL, source=(store["root"] / "no-such-model").as_uri())
        set_champion(store, int(broken.version))
        wait_for(lambda: "failed" in api.get("/ready").json()["reason"], 10, "the failed load to show")
        ready = api.get("/ready")
        assert ready.status_code == 200 and ready.json()["model"]["version"] == 1
        assert f"v{broken.version}" in ready.json()["reason"]
        assert api.get("/recommendations/1010").json()["model"]["version"] == 1
    set_champion(store, 1)


def test_a_store_that_does_not_exist_yet_is_waited_for_not_created(store, tmp_path):
    set_champion(store, 2)
    db_path = tmp_path / "later" / "mlflow.db"
    with serving(config_for(store, tmp_path, tracking_uri=f"sqlite:///{db_path}", fold_in=False)) as api:
        wait_for(lambda: api.get("/ready").json()["last_error"] is not None, 10, "the first failed poll")
        ready = api.get("/ready")
        assert ready.status_code == 503 and "does not exist yet" in ready.json()["reason"]
        time.sleep(0.5)
        assert not db_path.parent.exists(), "serving must not create an MLflow store"
        db_path.parent.mkdir()
        shutil.copy(Path(store["uri"].removeprefix("sqlite:///")), db_path)  # the pipeline's first run, in effect
        wait_for(lambda: api.get("/ready").status_code == 200, 20, "the store to be picked up")
        assert served_version(api) == 2


@pytest.mark.slow
def test_unreachable_mlflow_at_start_then_the_server_comes_up(store, tmp_path):
    """Start against a tracking server that is down: /ready explains; once it is up, the champion loads."""
    set_champion(store, 2)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    config = config_for(store, tmp_path, tracking_uri=uri, fold_in=False, poll_seconds=0.5)
    with serving(config) as api:
        wait_for(lambda: api.get("/ready").json()["last_error"] is not None, 10, "the first failed poll")
        ready = api.get("/ready")
        assert ready.status_code == 503
        assert "cannot reach" in ready.json()["reason"] and uri in ready.json()["reason"]
        assert api.get("/recommendations/1000").status_code == 503

        log_path = tmp_path / "mlflow-server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [*_mlflow_executable(), "server", "--backend-store-uri", store["uri"], "--host", "127.0.0.1",
                 "--port", str(port), "--workers", "1"],
                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(uri, server)
            wait_for(lambda: api.get("/ready").status_code == 200, 30, "recovery after the server came up")
            assert served_version(api) == 2
            assert api.get("/recommendations/1000").json()["source"] == "als"
        finally:
            stop(server)


@pytest.mark.slow
def test_python_m_serving_serves_a_bundle_directory(tmp_path):
    bundle_dir = trained_bundle(3, 4).save(tmp_path / "bundle")
    port = free_port()
    env = {**os.environ, "ALS_PIPELINE_HOME": str(tmp_path / "home"), "ALS_SERVING_BUNDLE_DIR": str(bundle_dir),
           "ALS_SERVING_PORT": str(port), "ALS_SERVING_MAX_N": "20"}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen([sys.executable, "-m", "serving"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as api:
            def up() -> bool:
                assert process.poll() is None, process.stdout.read().decode(errors="replace")
                try:
                    return api.get("/ready").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, 60, "python -m serving")
            info = api.get("/model").json()
            assert (info["source"], info["name"], info["version"]) == ("bundle_dir", "bundle", None)
            assert info["n_items"] == 60
            assert api.get("/recommendations/1001").json()["source"] == "als"
            assert api.get("/recommendations/1001", params={"n": 21}).status_code == 422
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    shutil.rmtree(bundle_dir)


def start_python_m_serving(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    """`python -m serving ARGS` in its own process group (uvicorn's workers included; stop it with
    `mlflow_server.stop` or killpg), output to ``log_path``, working directory its folder."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "serving", *args], env=env, cwd=log_path.parent, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


LOAD_CLIENTS = 6
LOAD_MAX_REQUESTS = 20_000
LOAD_POLL_S = 1.0
LOAD_SETTLE_S = 1.0  # of traffic on each version before the alias moves again
LOAD_ALLOWANCE_S = 2.0  # the load of the new version (MLflow read, scoring state) on top of one poll


@dataclass(frozen=True)
class Answer:
    started: float
    kind: str
    status: int
    version: int | None
    consistent: bool  # every list in it is the one its version gives


class Load:
    """Closed-loop clients on their own threads (keep-alive connections) until stopped or LOAD_MAX_REQUESTS.
    Each answer is checked against the reference answers of the version it names."""

    def __init__(self, base_url: str, expected: dict, users: list[int], items: list[int]):
        self.base_url, self.expected, self.users, self.items = base_url, expected, users, items
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(LOAD_CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _check(self, kind: str, body: dict) -> tuple[int | None, bool]:
        version = body["model"]["version"]
        if version not in self.expected:
            return version, False
        expected = self.expected[version]
        if kind == "user":
            return version, items_of(body) == expected["users"].get(int(body["user_id"]))
        if kind == "batch":  # all from the version the answer names: never a mix
            return version, all(items_of(r) == expected["users"].get(int(r["user_id"])) for r in body["results"])
        return version, [e["item_id"] for e in body["similar_items"]] == expected["items"].get(int(body["item_id"]))

    def _client(self, index: int) -> None:
        rng = np.random.default_rng(index)
        with httpx.Client(base_url=self.base_url, timeout=10.0) as api:
            while not self.stop.is_set() and len(self.answers) < LOAD_MAX_REQUESTS:
                kind = ("user", "batch", "similar", "model")[int(rng.integers(4))]
                started = time.monotonic()
                try:
                    if kind == "user":
                        response = api.get(f"/recommendations/{rng.choice(self.users)}", params={"n": 5})
                    elif kind == "batch":
                        ids = [int(u) for u in rng.choice(self.users, size=8, replace=False)]
                        response = api.post("/recommendations/batch", json={"user_ids": ids, "n": 5})
                    elif kind == "similar":
                        response = api.get(f"/similar-items/{rng.choice(self.items)}", params={"n": 5})
                    else:
                        response = api.get("/model")
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                version, consistent = None, False
                if response.status_code == 200:
                    body = response.json()
                    if kind == "model":
                        version, consistent = body["version"], body["version"] in self.expected
                    else:
                        version, consistent = self._check(kind, body)
                with self._lock:
                    self.answers.append(Answer(started, kind, response.status_code, version, consistent))


@pytest.mark.slow
def test_under_load_a_promotion_and_a_rollback_answer_every_request_from_one_version(store, tmp_path):
    """`python -m serving` (one worker) under LOAD_CLIENTS closed-loop clients while the gate promotes v2 over
    v1 and `rollback` restores v1: every answer is a 200 from v1 or v2 and matches that version's model (a batch
    never mixes them), no request fails, /model shows each switch within one poll plus the load, and once a
    switch is visible no request started later gets the old version."""
    set_champion(store, 1)
    client = store["client"]
    with contextlib.suppress(Exception):
        client.delete_registered_model_alias(MODEL, model_tags.PREVIOUS_CHAMPION)
    v1, v2 = store["bundles"][1], store["bundles"][2]
    users = [int(u) for u in v1.user_ids[:40]]
    items = [int(i) for i in v1.item_ids[:30]]
    expected = {version: {"users": {u: b.recommend_many([u], n=5).items_of(0)[0].tolist() for u in users},
                          "items": {i: b.similar_items(i, 5)[0].tolist() for i in items}}
                for version, b in ((1, v1), (2, v2))}
    assert any(expected[1]["users"][u] != expected[2]["users"][u] for u in users)

    port = free_port()
    env = {**os.environ, "ALS_PIPELINE_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": store["uri"],
           "ALS_MODEL_NAME": MODEL, "ALS_SERVING_PORT": str(port), "ALS_SERVING_POLL_SECONDS": str(LOAD_POLL_S),
           "ALS_SERVING_FOLD_IN": "0", "ALS_SERVING_WORKERS": "1"}
    env.pop("ALS_SERVING_BUNDLE_DIR", None)
    log_path = tmp_path / "serving.log"
    process = start_python_m_serving(env, log_path, "--log-level", "warning")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as api:
            def version_now() -> int | None:
                assert process.poll() is None, log_path.read_text(errors="replace")
                try:
                    return served_version(api)
                except httpx.TransportError:
                    return None

            wait_for(lambda: version_now() == 1, 60, "python -m serving to serve v1")
            with Load(f"http://127.0.0.1:{port}", expected, users, items) as load:
                time.sleep(LOAD_SETTLE_S)
                decision = promotion.promote_if_better(
                    client, MODEL, challenger_version=2, challenger_ndcg=0.27, popularity_ndcg=0.05,
                    evaluated_champion=(1, 0.21), score_champion=lambda version: 0.21,
                    lock_path=tmp_path / "promotion.lock")
                assert decision.promote
                promote_s = wait_for(lambda: version_now() == 2, 30, "/model to show the promoted v2")
                promoted_seen = time.monotonic()
                time.sleep(LOAD_SETTLE_S)
                assert promotion.rollback(client, MODEL, tmp_path / "promotion.lock") == (2, 1)
                rollback_s = wait_for(lambda: version_now() == 1, 30, "/model to show v1 after the rollback")
                rolled_back_seen = time.monotonic()
                time.sleep(LOAD_SETTLE_S)
            assert process.poll() is None
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
        set_champion(store, 1)

    answers = load.answers
    by_kind = {kind: sum(a.kind == kind for a in answers) for kind in ("user", "batch", "similar", "model")}
    print(f"{len(answers)} requests ({by_kind}); /model showed the promotion after {promote_s:.2f}s and the "
          f"rollback after {rollback_s:.2f}s at a {LOAD_POLL_S}s poll")
    assert not load.errors, load.errors[:5]
    assert len(answers) >= 200 and all(count > 0 for count in by_kind.values()), by_kind
    assert [a for a in answers if a.status != 200] == []
    assert [a for a in answers if not a.consistent] == []
    assert {a.version for a in answers} == {1, 2}
    assert promote_s <= LOAD_POLL_S + LOAD_ALLOWANCE_S and rollback_s <= LOAD_POLL_S + LOAD_ALLOWANCE_S
    # once /model shows a version, the swap has happened: no request started later is answered by the old one
    assert [a for a in answers if promoted_seen < a.started < rolled_back_seen - rollback_s and a.version != 2] == []
    assert [a for a in answers if a.started > rolled_back_seen and a.version != 1] == []
