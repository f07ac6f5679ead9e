"""The docs run as written: every shell block of README.md and docs/*.md is run, served or skipped with a reason.

README.md runs first in a fresh pipeline home (its quick start is `make run`); a document whose steps start
from nothing (FRESH_HOME_DOCS) gets a fresh home of its own; every other document is followed in README's
home, as an operator reads on after the quick start. The blocks of one document run in order, each in its
own `bash -euo pipefail`, with the variables a block exports (`eval "$(... pipelines.instance)"`) carried to
the next. A `serve` block's servers are started one at a time, polled until they answer, then stopped with
Ctrl-C (SIGINT to the process group, as a terminal sends it) and must be gone within STOP_TIMEOUT_S.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from doc_blocks import ROOT, ShellBlock, documents, shell_blocks

FRESH_HOME_DOCS = {"docs/pipelines.md"}
BLOCK_TIMEOUT_S = 1200
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 60
_CLEARED_ENV = ("ALS_PIPELINE_HOME", "ALS_PIPELINE_LANDING", "ALS_PIPELINE_START_DATE", "ALS_PIPELINE_EVENT_PRESET",
                "ALS_RETRAIN_CRON", "ALS_RETRAIN_ENGINE", "ALS_MODEL_NAME", "MLFLOW_TRACKING_URI", "DAGSTER_HOME", "ALS_SPARK_MASTER",
                "ALS_SPARK_EXCHANGE_DIR", "ALS_SPARK_CONF", "ALS_SPARK_JAVA_HOME")
_NOT_CARRIED = ("PWD", "OLDPWD", "SHLVL", "_")


def _runnable(doc: str) -> bool:
    return any(block.mode in ("run", "serve") for block in shell_blocks(doc))


class DocReader:
    """An operator at a terminal in the project root, with a pipeline home of their own."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.home = workdir / "home"
        self.env_file = workdir / "exported.sh"
        self.transcript = workdir / "transcript.log"
        self.env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
        self.env["ALS_PIPELINE_HOME"] = str(self.home)

    def _script(self, commands: str) -> str:
        keep = "|".join(_NOT_CARRIED)
        return (f"set -euo pipefail\n[ -f '{self.env_file}' ] && source '{self.env_file}'\n{commands}\n"
                f"export -p | grep -Ev '^declare -x ({keep})(=|$)' > '{self.env_file}'\n")

    def follow(self, doc: str) -> None:
        for block in shell_blocks(doc):
            if block.mode == "run":
                self.run(block)
            elif block.mode == "serve":
                self.serve(block)

    def run(self, block: ShellBlock) -> None:
        with open(self.transcript, "a") as log:
            log.write(f"\n### {block.where}\n{block.text}\n###\n")
            log.flush()
            result = subprocess.run(["bash", "-c", self._script(block.text)], cwd=ROOT, env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    timeout=BLOCK_TIMEOUT_S)
        if result.returncode != 0:
            pytest.fail(f"{block.where} exited {result.returncode}:\n{self.tail()}")

    def serve(self, block: ShellBlock) -> None:
        commands, urls = block.commands(), block.argument.split()
        assert len(commands) == len(urls), f"{block.where}: one URL per server line"
        for command, url in zip(commands, urls):
            self._start_answer_and_stop(block, command, url)

    def _start_answer_and_stop(self, block: ShellBlock, command: str, url: str) -> None:
        with open(self.transcript, "a") as log:
            log.write(f"\n### {block.where} (server, until {url} answers)\n{command}\n###\n")
            log.flush()
            process = subprocess.Popen(["bash", "-c", self._script(command)], cwd=ROOT, env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            answered = _wait_until_answers(url, process, START_TIMEOUT_S)
            if not answered:
                pytest.fail(f"{block.where}: `{command}` did not answer on {url} within {START_TIMEOUT_S}s "
                            f"(exit code {process.poll()}):\n{self.tail()}")
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C at the terminal
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{block.where}: `{command}` still running {STOP_TIMEOUT_S}s after Ctrl-C")
            left = _wait_for_group_to_end(process.pid, STOP_TIMEOUT_S)
            assert not left, f"{block.where}: processes left after Ctrl-C of `{command}`: {left}"
            assert not _answers(url), f"{block.where}: {url} still answers after Ctrl-C of `{command}`"
        finally:
            _kill_group(process.pid)
            process.wait(timeout=10)

    def tail(self, chars: int = 6000) -> str:
        return self.transcript.read_text()[-chars:] if self.transcript.exists() else ""


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def _wait_until_answers(url: str, process: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _answers(url):
            return True
        if process.poll() is not None:
            return False
        time.sleep(1)
    return False


def _group_members(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip() and " Z" not in f" {line.split()[1]}"]


def _wait_for_group_to_end(pgid: int, timeout_s: float) -> list[str]:
    """The group's processes still alive after ``timeout_s`` (children may take a moment to shut down)."""
    deadline = time.monotonic() + timeout_s
    while (left := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def readme_reader(tmp_path_factory) -> DocReader:
    """README.md followed in a fresh home; the documents that read on from it share that home."""
    reader = DocReader(tmp_path_factory.mktemp("readme"))
    reader.follow("README.md")
    return reader


def test_every_shell_block_says_how_the_doc_tests_treat_it():
    blocks = [block for doc in documents() for block in shell_blocks(doc)]
    assert blocks, "no shell block found: the parser is broken"
    unmarked = [b.where for b in blocks if b.mode is None]
    assert not unmarked, f"shell blocks without a `<!-- doc-test: run|serve URL|skip: reason -->` marker: {unmarked}"
    assert not [b.where for b in blocks if b.mode == "skip" and not b.argument], "a skip needs its reason"
    wrong = [b.where for b in blocks if b.mode == "serve" and len(b.argument.split()) != len(b.commands())]
    assert not wrong, f"serve blocks need one URL per server line: {wrong}"
    assert not [b.where for b in blocks if b.mode == "run" and not b.commands()], "a run block runs something"


@pytest.mark.slow
@pytest.mark.parametrize("doc", [doc for doc in documents() if _runnable(doc)])
def test_doc_runs_as_written(doc, request, tmp_path):
    if doc in FRESH_HOME_DOCS:
        reader = DocReader(tmp_path)
        reader.follow(doc)
    else:
        reader = request.getfixturevalue("readme_reader")  # README followed once, by the fixture
        if doc != "README.md":
            reader.follow(doc)
    # what the steps wrote went to the reader's home, not to the project's .data
    assert (reader.home / "warehouse.duckdb").is_file() and (reader.home / "mlflow.db").is_file()
