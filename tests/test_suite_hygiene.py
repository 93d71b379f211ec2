"""The suite's own rules: a skipped test fails the run (tests/conftest.py), unless AUDIORL_ALLOW_SKIPS=1."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNS = """
import pytest

def test_runs():
    pass

@pytest.mark.xfail(strict=True)
def test_known_bug():
    assert False
"""
SKIPS = """
import pytest

@pytest.mark.skip(reason="no frobnicator here")
def test_marked():
    pass

def test_skips_itself():
    pytest.skip("needs a GPU")
"""
SKIPS_AT_IMPORT = """
import pytest

pytest.importorskip("no_such_module_for_audiorl")

def test_never_collected():
    pass
"""


def run_pytest(tmp_path, *args: str, allow_skips: bool = False) -> subprocess.CompletedProcess:
    """pytest on tmp_path's files with tests/conftest.py loaded as a plug-in, as in the real suite."""
    files = {"test_runs.py": RUNS, "test_skips.py": SKIPS, "test_skips_at_import.py": SKIPS_AT_IMPORT}
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("AUDIORL_ALLOW_SKIPS", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = ROOT
    if allow_skips:
        env["AUDIORL_ALLOW_SKIPS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def test_a_skip_fails_the_run_and_is_named(tmp_path):
    proc = run_pytest(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "3 skipped test(s) fail the run (AUDIORL_ALLOW_SKIPS=1 allows skips)" in out, out
    assert "SKIPPED test_skips.py::test_marked: no frobnicator here" in out
    assert "SKIPPED test_skips.py::test_skips_itself: needs a GPU" in out
    assert "SKIPPED test_skips_at_import.py: could not import 'no_such_module_for_audiorl'" in out
    assert "test_known_bug" not in out  # an expected failure is not a skip


def test_a_run_without_skips_passes(tmp_path):
    proc = run_pytest(tmp_path, "test_runs.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fail the run" not in proc.stdout


def test_skips_pass_when_allowed(tmp_path):
    proc = run_pytest(tmp_path, allow_skips=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 skipped" in proc.stdout and "fail the run" not in proc.stdout
