"""benchmarks/decode_interleaved.py: its schedule and ratio summary against hand-computed
values (fast), and a `--quick` run end to end with llama.cpp in the same process (slow:
it converts four GGUFs and loads both libraries).
"""
from __future__ import annotations

import importlib.util
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench():
    if "decode_interleaved" in sys.modules:
        return sys.modules["decode_interleaved"]
    sys.path.insert(0, str(REPO / "benchmarks"))  # it imports cpu_decode beside it
    spec = importlib.util.spec_from_file_location("decode_interleaved", REPO / "benchmarks" / "decode_interleaved.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["decode_interleaved"] = mod  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


def test_abba_pairs_alternate_first_side_and_predecessor():
    b = bench()
    order = b.abba(3)
    assert order == ["olmo2", "llama.cpp", "llama.cpp", "olmo2"] * 3
    pairs = [tuple(order[i:i + 2]) for i in range(0, len(order), 2)]
    assert pairs.count(("olmo2", "llama.cpp")) == pairs.count(("llama.cpp", "olmo2")) == 3
    # every block but the first follows either the other side or itself, half each per side
    for side in b.SIDES:
        prev = [order[i - 1] == side for i in range(1, len(order)) if order[i] == side]
        assert sum(prev) in (len(prev) // 2, (len(prev) + 1) // 2)


def test_pair_ratios_follow_the_schedule_not_the_position():
    b = bench()
    order = b.abba(2)                       # o l l o o l l o
    rates = [10, 5, 4, 12, 9, 3, 6, 6]
    assert b.pair_ratios(order, rates) == [10 / 5, 12 / 4, 9 / 3, 6 / 6]
    with pytest.raises(ValueError):
        b.pair_ratios(["olmo2", "olmo2"], [1.0, 2.0])


def test_linear_drift_cancels_in_the_abba_geometric_mean():
    """olmo2 exactly 1.2x llama.cpp while the host slows by a constant factor per block:
    each pair is biased by the drift, in opposite directions for the two orders, and the
    geometric mean over an ABBA schedule recovers 1.2 exactly."""
    b = bench()
    order = b.abba(4)
    rates = [(1.2 if s == "olmo2" else 1.0) * 0.97 ** i for i, s in enumerate(order)]
    r = b.pair_ratios(order, rates)
    assert min(r) < 1.2 < max(r)
    assert b.geo_interval(r)[0] == pytest.approx(1.2, rel=1e-12)


def test_geo_interval_hand_values_and_normal_theory_width():
    b = bench()
    assert b.geo_interval([2.0, 0.5, 1.0, 4.0])[0] == pytest.approx(math.sqrt(2))  # (2·0.5·1·4)^(1/4)
    assert b.geo_interval([1.3] * 5) == pytest.approx((1.3, 1.3, 1.3))
    # log ratios ~ N(mu, s): the 95% interval is about exp(mean ± 1.96 s / sqrt(n))
    rng = random.Random(1)
    n, mu, s = 400, math.log(1.1), 0.1
    logs = [rng.gauss(mu, s) for _ in range(n)]
    g, lo, hi = b.geo_interval([math.exp(x) for x in logs])
    half = 1.96 * s / math.sqrt(n)
    assert math.log(g) == pytest.approx(sum(logs) / n)
    assert math.log(hi) - math.log(lo) == pytest.approx(2 * half, rel=0.15)
    assert lo < g < hi


def test_switch_effect_and_block_size():
    b = bench()
    order = b.abba(2)  # o l l o o l l o: olmo2 after llama at 3, 7; after itself at 4
    rates = [10, 5, 5, 8, 10, 4, 4, 8]
    assert b.switch_effect(order, rates, "olmo2") == pytest.approx(8 / 10)
    assert b.switch_effect(order, rates, "llama.cpp") == pytest.approx(4.5 / 4.5)
    assert b.switch_effect(["olmo2", "llama.cpp"], [1.0, 1.0], "olmo2") is None
    assert b.block_size(3.1, 1.5, 128) == 5      # ceil(4.65)
    assert b.block_size(40.0, 1.5, 32) == 32     # capped at --max-new
    assert b.block_size(0.5, 1.0, 128) == 2      # never a 1-token block


@pytest.mark.slow
def test_quick_run_interleaves_both_systems(tmp_path):
    pytest.importorskip("llama_cpp")
    env = dict(os.environ, OLMO2_CACHE=str(tmp_path), PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "decode_interleaved.py"), "--quick",
                        "--precisions", "fp32,int8"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "CPU: " in out and "1 OpenMP runtime(s) mapped" in out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in out.splitlines() if line.startswith(("| fp32 |", "| int8 |"))}
    assert set(rows) == {"fp32", "int8"}
    for cells in rows.values():
        est, lo, hi = (float(x) for x in cells[1].replace("×", "").replace("[", "").replace("]", "").replace(",", " ").split())
        assert 0 < lo <= est <= hi
    # fp32 vs llama.cpp F32 on the same weights: the first greedy tokens agree
    agree, n = (int(x) for x in rows["fp32"][-1].split("/"))
    assert agree >= 1 and n >= 2
