"""benchmarks/cpu_decode.py: the bytes-per-token count behind its bandwidth ratio (fast), and
a `--quick` run of the script end to end on the tiny-demo preset (slow: it starts several
worker processes, each importing torch).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from olmo2.config import ModelConfig
from olmo2.model import Olmo2

REPO = Path(__file__).resolve().parents[1]


def bench():
    spec = importlib.util.spec_from_file_location("cpu_decode", REPO / "benchmarks" / "cpu_decode.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_weight_bytes_per_token_counts_one_embedding_row():
    cfg = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)
    m = Olmo2(cfg)
    d, f, V, L, kv = 32, 64, 300, 2, 2 * 8
    # Per layer by hand: q (d·d), k and v (d·kv each), o (d·d), gate/up/down (3·d·f), 4 norms
    # (q_norm d, k_norm kv, two of d); then final norm d, lm_head V·d, one embedding row d.
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f + (d + kv + 2 * d)
    want = 4 * (L * per_layer + d + V * d + d)
    assert bench().weight_bytes_per_token(m.state_dict()) == want
    half = {k: v.to(torch.bfloat16) for k, v in m.state_dict().items()}
    assert bench().weight_bytes_per_token(half) == want // 2


@pytest.mark.parametrize("mode", ["none", "bf16", "int8", "int4"])
def test_stored_tensors_sizes_match_state_dict_without_building_it(mode):
    """The benchmark counts weight bytes from the modules' tensors (placeholders of dropped
    plain copies included), never from state_dict(), which rebuilds every bf16 plain weight."""
    from olmo2.quant import quantize_model
    cfg = ModelConfig(vocab_size=300, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=256, max_seq_len=64)
    m = Olmo2(cfg).eval()
    if mode != "none":
        quantize_model(m, mode, group_size=32)
        with torch.no_grad():
            m(torch.tensor([[1, 2, 3]]))  # packs whatever the kernels pack
    stored = bench().stored_tensors(m)
    sd = m.state_dict()
    assert sorted(stored) == sorted(sd)
    assert {k: (tuple(v.shape), v.dtype) for k, v in stored.items()} == {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}
    assert bench().weight_bytes_per_token(stored) == bench().weight_bytes_per_token(sd)


@pytest.mark.slow
def test_quick_run_prints_a_table(tmp_path):
    env = dict(os.environ, OLMO2_CACHE=str(tmp_path), PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_decode.py"), "--quick", "--only", "olmo2",
                        "--threads", "1"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "CPU: " in out and "load average" in out and "GB/s" in out
    row = next(line for line in out.splitlines() if line.startswith("| olmo2 fp32 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[2]) > 0   # decode and prompt tok/s
    assert cells[-1].endswith("×")                       # ratio to the bandwidth limit
    assert cells[3].endswith("GiB") and float(cells[4].rstrip("×")) > 1  # peak RSS over the (tiny) weights
