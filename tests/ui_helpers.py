"""Servers and a headless browser for the operator's end-to-end tests, all bounded in time and always stopped.

- `ServerProcess`: a long-running command (`dagster dev`, `mlflow server`) in its own process group, started
  with an environment of our choosing, waited for on an HTTP URL, its output kept in a log file, and the whole
  group terminated (then killed) on exit.
- `Browser`: headless Chromium driven over the DevTools protocol (a websocket, no extra packages): open a
  page, wait until its rendered text holds what we expect, save a screenshot.
- `graphql`: one POST to Dagster's `/graphql`, raising on transport and GraphQL errors.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import httpx

from als_store.settings import PROJECT_ROOT

STOP_TIMEOUT_S = 20.0
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
    "--hide-scrollbars", "--mute-audio",
)
# Environment a child must not inherit from the developer's shell: it would point the pipeline elsewhere.
PIPELINE_ENV_PREFIXES = ("ALS_", "MLFLOW_", "DAGSTER_")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def artifacts_dir(name: str) -> Path:
    """Where screenshots are kept after the run: $TEST_ARTIFACTS_DIR or <project>/test-artifacts (gitignored)."""
    root = Path(os.environ.get("TEST_ARTIFACTS_DIR") or PROJECT_ROOT / "test-artifacts")
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def pipeline_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment with the pipeline pointed at `home` (and nothing else of ours inherited)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PIPELINE_ENV_PREFIXES)}
    env.update({"ALS_PIPELINE_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra})
    return env


def wait_for(what: str, probe: Callable[[], object], timeout_s: float, interval_s: float = 0.5,
             alive: Callable[[], None] | None = None):
    """Call `probe` until it returns something truthy; fail naming `what` and the last error after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        if alive is not None:
            alive()
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a probe may fail until the thing is up
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not ready after {timeout_s:.0f}s (last error: {last_error!r})")
        time.sleep(interval_s)


class ServerProcess:
    """`with ServerProcess(name, command, env, log_dir) as server: server.wait_http(url)`."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], log_dir: Path,
                 cwd: Path = PROJECT_ROOT):
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = Path(log_dir) / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        try:
            # a session of its own: dagster dev and mlflow server fork children that must go with them
            self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}")

    def wait_http(self, url: str, timeout_s: float, ok: Callable[[httpx.Response], bool] | None = None) -> None:
        def probe() -> bool:
            response = httpx.get(url, timeout=5.0)
            return ok(response) if ok else response.status_code == 200

        try:
            wait_for(f"{self.name} at {url}", probe, timeout_s, alive=self.check_alive)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {self.log_path} ---\n{self.log_tail()}") from None

    def stop(self) -> None:
        """SIGTERM the group (lets dagster dev stop its daemon and code server), then SIGKILL what is left."""
        process = self.process
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
                # children may outlive the leader for a moment; give the group the same deadline
                _wait_group_gone(process.pid, STOP_TIMEOUT_S)
                break
            except (subprocess.TimeoutExpired, TimeoutError):
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # nothing may survive the test
        self.process = None


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise TimeoutError(f"process group {pgid} still alive")


def graphql(base_url: str, query: str, variables: Mapping | None = None, timeout_s: float = 60.0) -> dict:
    response = httpx.post(f"{base_url}/graphql", json={"query": query, "variables": dict(variables or {})},
                          timeout=timeout_s)
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {json.dumps(body['errors'], indent=2)[:4000]}")
    return body["data"]


# --------------------------------------------------------------------------------------------- browser


def chromium_executable() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol.

    Rendered text is read with `Runtime.evaluate("document.body.innerText")`: the Dagster and MLflow UIs are
    React apps, so the page is ready when the text we expect appears, not when `load` fires.
    """

    def __init__(self, executable: str, width: int = 1400, height: int = 900, start_timeout_s: float = 60.0):
        self.executable = executable
        self.width, self.height = width, height
        self.start_timeout_s = start_timeout_s
        self._ids = itertools.count(1)
        self._stack = contextlib.ExitStack()
        self._ws = None

    def __enter__(self) -> Browser:
        from websockets.sync.client import connect

        try:
            profile = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="chromium-profile-")))
            command = [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                       f"--window-size={self.width},{self.height}", "about:blank"]
            process = self._stack.enter_context(ServerProcess("chromium", command, os.environ, profile / "logs"))
            port_file = profile / "DevToolsActivePort"  # chromium writes the port it picked here
            port = wait_for("chromium DevTools port", lambda: port_file.read_text().split()[0],
                            self.start_timeout_s, interval_s=0.2, alive=process.check_alive)
            targets = wait_for("chromium page target", lambda: [
                t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json() if t["type"] == "page"
            ], self.start_timeout_s, alive=process.check_alive)
            self._ws = self._stack.enter_context(
                connect(targets[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30))
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()  # websocket, then chromium's process group, then its profile

    def call(self, method: str, params: Mapping | None = None, timeout_s: float = 60.0) -> dict:
        """Send one DevTools command and wait for its answer (events in between are dropped)."""
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": dict(params or {})}))
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"DevTools {method}: no answer after {timeout_s:.0f}s")
            message = json.loads(self._ws.recv(timeout=remaining))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"DevTools {method} failed: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails'].get('text')} in {expression[:200]}")
        return result.get("result", {}).get("value")

    def wait_js(self, what: str, expression: str, timeout_s: float = 30.0):
        """Wait until a JavaScript expression is truthy; returns its value."""
        return wait_for(what, lambda: self.evaluate(expression), timeout_s, interval_s=0.3)

    def click(self, selector: str) -> bool:
        """Click the first element matching a CSS selector; False when there is none."""
        return bool(self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (e) e.click(); return !!e; }})()"))

    def type_into(self, selector: str, text: str) -> None:
        """Focus an input and type into it as a keyboard would (React sees real input events)."""
        if not self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                             " if (e) e.focus(); return !!e; })()"):
            raise AssertionError(f"no element matches {selector!r}")
        self.call("Input.insertText", {"text": text})

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def open(self, url: str, expect: Sequence[str], timeout_s: float = 60.0, settle_s: float = 1.0,
             fresh: bool = False) -> str:
        """Navigate to `url` and wait until the rendered text contains every string of `expect`;
        returns that text. On timeout the error shows what the page did say. `fresh` loads the page as a
        new document: a single-page app may ignore a change of the URL's #fragment alone."""
        if fresh:
            self.call("Page.navigate", {"url": "about:blank"})
        self.call("Page.navigate", {"url": url})
        last = {"text": ""}

        def rendered() -> bool:
            last["text"] = self.text()
            return all(s in last["text"] for s in expect)

        try:
            wait_for(f"page {url}", rendered, timeout_s, interval_s=0.5)
        except TimeoutError as exc:
            missing = [s for s in expect if s not in last["text"]]
            raise AssertionError(f"{exc}\nmissing {missing}; the page said:\n{last['text'][:3000]}") from None
        time.sleep(settle_s)  # late requests (charts, images) finish drawing
        return self.text()

    def wait_images(self, minimum: int = 1, timeout_s: float = 30.0) -> list[int]:
        """Wait until at least `minimum` <img> are on the page and every one has decoded with a non-zero
        size (a broken artifact link has naturalWidth 0); returns their natural widths."""
        return self.wait_js(
            f"{minimum}+ images loaded",
            "(() => { const imgs = Array.from(document.images);"
            f" return imgs.length >= {minimum} && imgs.every(i => i.complete && i.naturalWidth > 0)"
            " ? imgs.map(i => i.naturalWidth) : null; })()",
            timeout_s)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@contextlib.contextmanager
def browser_or_skip() -> Iterator[Browser]:
    import pytest

    executable = chromium_executable()
    if executable is None:
        pytest.skip("Chromium not found on PATH (install it: apt-get install -y chromium); UI screenshots skipped")
    with Browser(executable) as browser:
        yield browser
