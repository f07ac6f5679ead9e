"""The conftest hook that makes a green CI mean every test ran: under CI=true a skip is a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SKIPPING_TESTS = '''
import pytest

def test_needs_a_browser():
    pytest.skip("Chromium not found")

@pytest.mark.skipif(True, reason="no data")
def test_needs_data():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False

def test_runs():
    pass
'''


def _run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(SKIPPING_TESTS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(Path(__file__).parent)  # the fixture modules conftest.py names in pytest_plugins
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_skips_fail_under_ci(tmp_path):
    result = _run_pytest(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    assert "skipped under CI=true" in result.stdout
    assert "Chromium not found" in result.stdout and "no data" in result.stdout
    assert "1 passed" in result.stdout and "1 xfailed" in result.stdout


def test_skips_stay_skips_outside_ci(tmp_path):
    result = _run_pytest(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "2 skipped" in result.stdout
