"""How the loop picks its compute dtype and compile on a CPU: `precision=fast` trains in bf16
only where the CPU has bf16 dot products (AVX2-only CPUs keep fp32, where bf16 GEMM is
emulated), `auto` stays fp32 on every CPU (the exactness tests rest on it), bf16 training
stays close to fp32 with fp32 parameters, and `compile=true` without a C++ compiler trains
eager with a note instead of crashing."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from olmo2.train import parallel
from olmo2.train.loop import train
sys.path.insert(0, os.path.dirname(__file__))
from test_train_loop import MODEL_CFG, ArraySource, cfg, corpus, one_thread  # noqa: E402,F401 (autouse)

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags,cap,want", [
    ({"avx512f", "amx_bf16", "avx512_bf16"}, "AVX512", torch.bfloat16),   # Sapphire/Emerald Rapids
    ({"avx512f", "avx512_bf16"}, "AVX512", torch.bfloat16),                # AVX-512 BF16, no AMX
    ({"avx2", "fma"}, "AVX2", torch.float32),                              # AMD Zen 3: emulated bf16
    ({"avx512f", "amx_bf16"}, "AVX2", torch.float32),                      # ATEN_CPU_CAPABILITY=avx2
    (set(), "DEFAULT", torch.float32),                                     # no /proc/cpuinfo
])
def test_fast_precision_follows_the_cpu(monkeypatch, flags, cap, want):
    monkeypatch.setattr(parallel, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: cap)
    assert parallel.resolve_precision(cfg(precision="fast"), CPU) == want
    assert parallel.cpu_bf16_reason().startswith("bf16" if want == torch.bfloat16 else "fp32")
    # auto stays fp32 on every CPU; explicit values are obeyed; GPUs get bf16 from both
    assert parallel.resolve_precision(cfg(precision="auto"), CPU) == torch.float32
    assert parallel.resolve_precision(cfg(precision="bf16"), CPU) == torch.bfloat16
    assert parallel.resolve_precision(cfg(precision="fast"), torch.device("cuda")) == torch.bfloat16


def test_aten_cpu_capability_forces_the_fp32_fallback():
    """The real switch (not a monkeypatch): torch honours ATEN_CPU_CAPABILITY, and so do we."""
    code = ("import torch; from olmo2.train import parallel; from olmo2.train.config import TrainConfig; "
            "print(parallel.resolve_precision(TrainConfig(precision='fast'), torch.device('cpu')))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch.float32"


def test_bf16_training_on_cpu_tracks_fp32(tmp_path):
    """bf16 autocast on the CPU: parameters and AdamW state stay fp32, and the losses of a short
    run stay within bf16 rounding of the fp32 run's (same data, same init)."""
    rows = corpus(16)
    ref = train(MODEL_CFG, cfg(max_steps=4), ArraySource(rows, 4), tmp_path / "fp32")
    got = train(MODEL_CFG, cfg(max_steps=4, precision="bf16"), ArraySource(rows, 4), tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in got.model.parameters())
    assert got.losses != ref.losses  # it did run in bf16
    np.testing.assert_allclose(got.losses, ref.losses, rtol=2e-2)
    assert got.losses[-1] < got.losses[0]


def test_compile_without_a_compiler_trains_eager(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(parallel, "compiler_missing", lambda device: "no C++ compiler for Inductor (test)")
    rows = corpus(8)
    ref = train(MODEL_CFG, cfg(max_steps=2), ArraySource(rows, 4), tmp_path / "ref")
    got = train(MODEL_CFG, cfg(max_steps=2, compile=True), ArraySource(rows, 4), tmp_path / "c")
    assert "train.compile: no C++ compiler for Inductor (test); training eager" in capsys.readouterr().err
    assert got.losses == ref.losses
