"""The CI=true hook (tests/ci_strict.py): registry-only skips fail in CI, others stay skips."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

def test_needs_registry():
    pytest.skip("dolma2 tokenizer unavailable (simulated)")

def test_needs_transformers():
    pytest.skip("could not import 'transformers': No module named 'transformers' (simulated)")

def test_needs_gpu():
    pytest.skip("no CUDA device")
'''


def _run(tmp_path, ci: str | None):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "ci_strict", "-p", "no:cacheprovider",
                           str(tmp_path / "test_sample.py"), "--rootdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_registry_skips_fail_only_in_ci(tmp_path):
    local = _run(tmp_path, None)
    assert local.returncode == 0 and "3 skipped" in local.stdout, local.stdout
    ci = _run(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout
    assert "2 failed" in ci.stdout and "1 skipped" in ci.stdout, ci.stdout  # the GPU skip stays a skip
    assert "needs only registry packages" in ci.stdout
