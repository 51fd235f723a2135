"""Quantized linears against their float reference, with bounds derived from the formats.

Every bound below is computed from the quantization step and the rounding units involved,
not picked: int8 |w - q·s| <= s/2 per weight (s rounded up to bf16, so no clamping);
int4 <= s/2 + the zero's bf16 rounding; the aten kernels round x and y to bf16 (relative
2^-9 each, round-to-nearest); fbgemm quantizes x per tensor to 8 (or 7) bits.
"""
from __future__ import annotations

import pytest
import torch

from olmo2.quant import formats
from olmo2.quant.kernels import ENV, choose, cpu_kind, fbgemm_available
from olmo2.quant.linear import BF16Embedding, BF16Linear, Int4Linear, Int8Embedding, Int8Linear

BF16_U = 2.0 ** -9          # unit roundoff of bf16 (8 significant bits, round to nearest)
FP32_U = 2.0 ** -24


def _w(n, k, seed=0, outliers=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    if outliers:  # a few large weights, as real checkpoints have: they set the row/group scale
        w[torch.randint(0, n, (4,), generator=g), torch.randint(0, k, (4,), generator=g)] = 0.3
    w[1] = 0.0  # an all-zero row must survive (scale floor)
    return w


def _fp32_slack(x, w_abs):
    """Worst-case fp32 accumulation error of x @ w^T: K·u·Σ|x||w| (the textbook dot-product bound)."""
    return x.shape[-1] * FP32_U * (x.abs() @ w_abs.T)


@pytest.mark.parametrize("n,k", [(48, 64), (17, 96)])
def test_int8_weights_within_half_step(n, k):
    w = _w(n, k)
    q, s = formats.quantize_int8(w)
    assert q.dtype == torch.int8 and s.dtype == torch.bfloat16 and int(q.abs().max()) <= 127
    err = (w - formats.dequantize_int8(q, s)).abs()
    assert bool((err <= s.float()[:, None] / 2 * (1 + 1e-6)).all())
    assert bool((formats.dequantize_int8(q, s)[1] == 0).all())


@pytest.mark.parametrize("gs", [32, 64])
def test_int4_weights_within_half_step_plus_zero_rounding(gs):
    n, k = 32, 128
    w = _w(n, k, seed=1)
    p, s, z = formats.quantize_int4(w, gs)
    assert p.shape == (n, k // 2) and s.shape == z.shape == (n, k // gs)
    codes = formats.unpack_int4(p)
    assert int(codes.max()) <= 15
    g = w.reshape(n, k // gs, gs)
    z_exact = g.amin(-1) + 8 * s.float()          # the unrounded zero for the stored scale
    bound = (s.float() / 2 + (z.float() - z_exact).abs())[..., None] * (1 + 1e-6)
    err = (g - formats.dequantize_int4(p, s, z, gs).reshape(n, k // gs, gs)).abs()
    assert bool((err <= bound).all())
    # the packing is lossless
    assert torch.equal(formats.unpack_int4(p)[:, 0::2] | (formats.unpack_int4(p)[:, 1::2] << 4), p)


def _x(m, k, seed=2):
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("m", [1, 20])   # decode (GEMV) and prefill (GEMM) rows
def test_int8_reference_vs_float(monkeypatch, m):
    monkeypatch.setenv(ENV, "reference")
    w, x = _w(64, 96), _x(m, 96)
    lin = Int8Linear.from_float(w)
    y, y_float = lin(x), x @ w.T
    bound = x.abs().sum(-1, keepdim=True) * lin.scales.float()[None] / 2 + 2 * _fp32_slack(x, w.abs())
    assert bool(((y - y_float).abs() <= bound).all())


@pytest.mark.parametrize("kernel", ["aten", "fbgemm"])
@pytest.mark.parametrize("m", [1, 20])
def test_int8_fast_kernels_agree_with_reference(monkeypatch, kernel, m):
    if kernel == "fbgemm" and not fbgemm_available():
        pytest.skip("this torch build has no fbgemm engine")
    w, x = _w(64, 96), _x(m, 96)
    lin = Int8Linear.from_float(w)
    monkeypatch.setenv(ENV, "reference")
    y_ref = lin(x)
    monkeypatch.setenv(ENV, kernel)
    assert choose("int8", "decode") == kernel
    y = lin(x)
    wd = lin.dequantized().abs()
    if kernel == "aten":   # x rounded to bf16, fp32 accumulation, y rounded to bf16
        bound = BF16_U * (x.abs() @ wd.T) + BF16_U * y_ref.abs() + 2 * _fp32_slack(x, wd)
    else:                  # x quantized per tensor: step = range / (255 or 127 with reduce_range)
        levels = 255 if cpu_kind().vnni else 127
        step = (x.max().clamp_min(0) - x.min().clamp_max(0)) / levels
        bound = step / 2 * wd.sum(-1)[None] * (1 + 1e-3) + 2 * _fp32_slack(x, wd)
    assert bool(((y - y_ref).abs() <= bound).all()), float(((y - y_ref).abs() - bound).max())


@pytest.mark.parametrize("m", [1, 20])
def test_int4_kernels_vs_float(monkeypatch, m):
    n, k, gs = 32, 128, 32
    w, x = _w(n, k, seed=3), _x(m, k)
    lin = Int4Linear.from_float(w, gs)
    monkeypatch.setenv(ENV, "reference")
    y_ref = lin(x)
    wd = lin.dequantized()
    # reference vs float: the per-weight bound summed against |x|
    per_w = (lin.scales.float() / 2 + 0.0).repeat_interleave(gs, dim=1)   # s/2 per weight
    z_exact = w.reshape(n, k // gs, gs).amin(-1) + 8 * lin.scales.float()
    per_w = per_w + (lin.zeros.float() - z_exact).abs().repeat_interleave(gs, dim=1)
    bound = x.abs() @ per_w.T + 2 * _fp32_slack(x, w.abs() + wd.abs())
    assert bool(((y_ref - x @ w.T).abs() <= bound).all())
    monkeypatch.setenv(ENV, "aten")
    y = lin(x)
    bound = BF16_U * (x.abs() @ wd.abs().T) + BF16_U * y_ref.abs() + 2 * _fp32_slack(x, wd.abs())
    assert bool(((y - y_ref).abs() <= bound).all()), float(((y - y_ref).abs() - bound).max())


def test_int4_shape_the_aten_kernel_cannot_take_falls_back(monkeypatch):
    monkeypatch.setenv(ENV, "aten")
    lin = Int4Linear.from_float(_w(8, 64), 32)    # N = 8: aten packs 16 rows at a time
    assert not lin.runs("aten")
    x = _x(1, 64)
    assert torch.equal(lin(x), torch.nn.functional.linear(x, lin.dequantized()))


def test_bf16_linear_and_int8_embedding(monkeypatch):
    w, x = _w(64, 96), _x(3, 96)
    lin = BF16Linear.from_float(w)
    monkeypatch.setenv(ENV, "reference")
    y_ref = lin(x)
    assert bool(((y_ref - x @ w.T).abs() <= BF16_U * (x.abs() @ w.abs().T) + 2 * _fp32_slack(x, w.abs())).all())
    assert lin.weight.dtype == torch.float32 and lin.weight.numel() == 0  # the compute-dtype probe
    emb_w = _w(50, 16)
    emb = Int8Embedding.from_float(emb_w)
    ids = torch.tensor([[0, 1, 49, 7]])
    got = emb(ids)
    assert got.dtype == torch.float32
    assert bool(((got - emb_w[ids]).abs() <= emb.scales.float()[ids][..., None] / 2 * (1 + 1e-6)).all())


@pytest.mark.parametrize("m", [1, 40])
def test_bf16_mkldnn_kernel_matches_f_linear(monkeypatch, m):
    """oneDNN's linear on the once-reordered weight against eager bf16 F.linear (aten) and
    the float product: identical at one row (decode), within bf16 rounding of the output
    otherwise (the blocked GEMM may sum in another order)."""
    from olmo2.quant.kernels import mkldnn_available
    if not mkldnn_available():
        pytest.skip("this torch build has no oneDNN linear ops")
    w, x = _w(48, 96), _x(m, 96)
    lin = BF16Linear.from_float(w)
    monkeypatch.setenv(ENV, "aten")
    y_aten = lin(x)
    monkeypatch.setenv(ENV, "mkldnn")
    y = lin(x)
    assert "mkldnn" in lin._packed and y.dtype == torch.float32
    if m == 1:
        assert torch.equal(y, y_aten)
    # The plain copy is dropped once packed (memory), yet saving, loading and the other
    # kernels still see the exact weight.
    assert lin.weight_bf16.untyped_storage().nbytes() == 2
    assert torch.equal(lin.state_dict()["weight_bf16"], w.to(torch.bfloat16))
    monkeypatch.setenv(ENV, "aten")
    assert torch.equal(lin(x), y_aten)
    fresh = BF16Linear(96, 48)
    fresh.load_state_dict(lin.state_dict())
    lin.load_state_dict(fresh.state_dict())
    assert torch.equal(lin.weight_bf16, w.to(torch.bfloat16)) and not lin._packed
    monkeypatch.setenv(ENV, "mkldnn")
    wd, xb = lin.dequantized(), x.to(torch.bfloat16).float()
    bound = BF16_U * (x.abs() @ wd.abs().T) + BF16_U * (xb @ wd.T).abs() + 2 * _fp32_slack(x, wd.abs())
    assert bool(((y - x @ wd.T).abs() <= bound).all()), float(((y - x @ wd.T).abs() - bound).max())


def test_bf16_keep_plain_for_compile(monkeypatch):
    """A model about to be compiled gets its plain bf16 weights back and stops using the
    opaque oneDNN copy (Inductor cannot take it as a graph input; it packs its own)."""
    from olmo2.quant.kernels import mkldnn_available
    if not mkldnn_available():
        pytest.skip("this torch build has no oneDNN linear ops")
    w, x = _w(32, 64), _x(1, 64)
    lin = BF16Linear.from_float(w)
    monkeypatch.setenv(ENV, "mkldnn")
    y = lin(x)
    assert lin._plain_dropped
    lin.keep_plain()
    assert torch.equal(lin.weight_bf16, w.to(torch.bfloat16)) and not lin.runs("mkldnn") and not lin._packed
    assert torch.equal(lin(x), y)  # the aten path, same values at one row
    assert not lin._packed and not lin._plain_dropped


def test_env_override_is_checked(monkeypatch):
    from olmo2.errors import ConfigError
    monkeypatch.setenv(ENV, "fastest")
    with pytest.raises(ConfigError, match=ENV):
        choose("int8", "decode")
    monkeypatch.setenv(ENV, "reference")
    assert {choose(f, p) for f in ("int8", "int4", "bf16") for p in ("decode", "prefill")} == {"reference"}


def test_avx2_dispatch_never_picks_avx512_only_kernels(monkeypatch):
    """On an AVX2-only CPU (the AMD machine kind) auto must avoid the aten int4/int8 paths,
    whose fast code is AVX-512 only; simulated by faking the capability torch reports."""
    from olmo2.quant import kernels
    monkeypatch.delenv(ENV, raising=False)
    kernels.cpu_kind.cache_clear()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    try:
        assert not kernels.cpu_kind().avx512 and not kernels.cpu_kind().bf16
        # without olmo2's native library (no compiler, OLMO2_NATIVE=0)
        monkeypatch.setattr(kernels, "native_available", lambda: False)
        assert choose("int4", "decode") == "reference" and choose("bf16", "decode") == "reference"
        assert choose("int8", "decode") in ("fbgemm", "reference")
        # with it, decode runs its AVX2 path in every format, and int4 prefill too (its
        # alternative dequantizes the whole weight per call); bf16 prefill keeps the upcast
        monkeypatch.setattr(kernels, "native_available", lambda: True)
        assert {choose(f, "decode") for f in ("int8", "int4", "bf16")} == {"native"}
        assert choose("int4", "prefill") == "native" and choose("bf16", "prefill") == "reference"
        assert choose("int8", "decode", native_fits=False) in ("fbgemm", "reference")
    finally:
        kernels.cpu_kind.cache_clear()


def test_kernel_choice_is_marked_constant_like_torch_marks_it():
    """linear.py sets the attribute torch.compiler.assume_constant_result sets, without the
    decorator's torch._dynamo import; this fails if a torch upgrade spells it differently."""
    from olmo2.quant.linear import _kernel_for

    def f():
        return 0
    marked = torch.compiler.assume_constant_result(f)
    added = {k: v for k, v in vars(marked).items()}
    assert added == {"_dynamo_marked_constant": True}
    assert _kernel_for._dynamo_marked_constant is True


def test_load_path_imports_do_not_pull_in_dynamo():
    """torch._dynamo costs ~0.14 GiB of RSS on import; loading and decoding must not need it."""
    import subprocess
    import sys
    code = ("import sys, olmo2.checkpoint, olmo2.quant.io, olmo2.quant.linear, olmo2.infer.generate; "
            "print('torch._dynamo' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize("cls", [Int8Embedding, BF16Embedding])
def test_table_over_float_rows_equals_the_converted_table(cls):
    """`over_rows` converts only the rows a lookup gathers; every format converts rows on
    their own, so lookups, state_dict and a reload equal the table converted whole."""
    w = torch.randn(50, 24, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.01, 5, 50)[:, None]
    whole, lazy = cls.from_float(w), cls.over_rows(w)
    ids = torch.tensor([[0, 7, 7, 49], [3, 1, 2, 0]])
    assert torch.equal(lazy(ids), whole(ids)) and lazy(ids).dtype == torch.float32
    sd, ref = lazy.state_dict(), whole.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    fresh = cls.over_rows(torch.zeros_like(w))
    fresh.load_state_dict(ref)  # loading real buffers drops the float rows
    assert fresh._rows is None and torch.equal(fresh(ids), whole(ids))


def test_table_over_float_rows_compiles_without_a_graph_break():
    """The row quantizer has no data-dependent branch (formats._bf16_round_up), so a compiled
    decode step stays one graph through the embedding."""
    w = torch.randn(40, 16, generator=torch.Generator().manual_seed(4))
    emb = Int8Embedding.over_rows(w)
    calls = []
    emb.drop_pages(lambda: calls.append(1))  # eager only: a compiled graph skips it
    ids = torch.tensor([[1, 39, 5]])
    assert torch.equal(emb(ids), Int8Embedding.from_float(w)(ids)) and calls == [1]
    comp = torch.compile(emb, backend="aot_eager", fullgraph=True)
    assert torch.equal(comp(ids), Int8Embedding.from_float(w)(ids))
