"""olmo2/infer/omp.py: the CLI bounds libgomp's spin before torch loads it, and never
overrides a user's choice. Each case runs in a fresh interpreter: libgomp reads its
environment once, when `import torch` loads it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys
{pre}
from olmo2.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print(os.environ.get("GOMP_SPINCOUNT"), os.environ.get("OMP_WAIT_POLICY"))
"""


def run(pre: str = "", **env) -> str:
    e = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE.format(pre=pre)], capture_output=True, text=True, env=e,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_the_cli_sets_a_bounded_spin_count():
    assert run() == "10000 None"


@pytest.mark.parametrize("env,want", [({"GOMP_SPINCOUNT": "300000"}, "300000 None"),
                                      ({"OMP_WAIT_POLICY": "PASSIVE"}, "None PASSIVE")])
def test_a_users_openmp_setting_is_kept(env, want):
    assert run(**env) == want


def test_too_late_once_torch_is_loaded():
    """After `import torch` libgomp has read its environment: setting it then would only
    make the variable lie about what the process runs with."""
    assert run(pre="import torch") == "None None"


def test_the_setting_reaches_libgomp():
    """Not just the variable: the libgomp that `import torch` loads afterwards parsed it
    (OMP_DISPLAY_ENV=VERBOSE makes libgomp print the settings it initialised with)."""
    e = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    e["OMP_DISPLAY_ENV"] = "VERBOSE"
    code = PROBE.format(pre="") + "\nimport torch; torch.ones(1)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "GOMP_SPINCOUNT = '10000'" in out.stderr, out.stderr[-2000:]
