"""olmo2's native decode kernels (olmo2/quant/native.py, native/gemv.c) against references.

Two references for int8/int4, both in fp64:
- the float one, `dequantized() @ x`: the kernel differs from it by the activation
  quantization, |x - x̂| <= xs_b / 2 per element with xs_b = amax_b / L per block b of 32
  columns (int8: L = 16383, the ~15-bit activation split into two int8 digits; int4:
  L = 127, one int8 digit), so |y - y_float| <= Σ_b xs_b/2 · Σ_{k∈b} |w_k| (int4: the zero-point term uses
  the exact x, so only the (q-8)·s part carries it) plus fp32 accumulation slack;
- an emulation of the same algorithm (x̂ from the same fp32 operations, then exact
  products): the kernel differs from it only by fp32 rounding of its sums, bounded by the
  textbook K·u·Σ|x̂||w|. This is the sharp check that every nibble, lane and scale lines up.
bf16 has exact products (fp32 FMA of a widened bf16 weight), so only the fp32 slack.

The int8 GEMM (native/gemm.c, AVX-512 only, from native.INT8_GEMM_ROWS rows) quantizes the
same way over *strided* blocks of 32 columns (block of column k: (k // 512, (k % 64) // 4),
the columns one int32 lane meets in 8 chunks of 64; fewer in a last partial group), so the
same two references apply with that block map. On AVX2 int8_mm keeps the per-row kernel at
every row count (checked bit for bit against native.per_row()).

The int4 GEMMs (native/gemm4.c on AVX-512 VNNI, native/gemm4_amx.c where AMX-INT8 runs;
from native.INT4_GEMM_ROWS rows) keep the decode kernel's x̂ (contiguous blocks of 32, one
int8 digit) and exact int32 products; only their fp32 sums run in other orders. So both
references above apply unchanged, and each agrees with the per-row kernel
(native.per_row()) within the sum of the two kernels' fp32 slacks against the shared
emulation, not bit for bit. Both GEMMs are tested on a CPU with AMX (OLMO2_NATIVE_AMX=0
selects gemm4.c); without AMX, gemm4.c only.

The library is built once per session into a temporary cache (module fixture); the cache
test builds a second copy into its own directory.
"""
from __future__ import annotations

import pytest
import torch
from conftest import native_library

from olmo2.quant import formats, native
from olmo2.quant.kernels import ENV, choose, cpu_flags
from olmo2.quant.linear import BF16Linear, Int4Linear, Int8Linear

FP32_U = 2.0 ** -24
AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= cpu_flags()


@pytest.fixture(scope="module", autouse=True)
def lib(tmp_path_factory):
    yield from native_library(tmp_path_factory, ("OLMO2_NATIVE_ISA", "OLMO2_NATIVE"))


def _isas():
    return ["avx512", "avx2"] if AVX512 else ["avx2"]


@pytest.fixture
def use_isa(monkeypatch):
    def set_(isa):
        monkeypatch.setenv("OLMO2_NATIVE_ISA", isa)
        native.reset()
        assert native.isa() == isa
    yield set_
    monkeypatch.delenv("OLMO2_NATIVE_ISA", raising=False)
    native.reset()


def _x(m, k, seed=2):
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed))
    x[0, 3] = 25.0        # an outlier: sets its block's scale, must not leak into other blocks
    x[-1, 32:64] = 0.0    # an all-zero block (scale 0)
    return x


def _w(n, k, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.02


L8, L4 = 16383.0, 127.0   # activation levels: int8 kernel (two int8 digits), int4 kernel


def _xhat(x, levels):
    """The activation as the kernels quantize it: same fp32 ops, ties to even. The int8
    kernel's hi/lo digit split is exact (128·hi + lo = xq), so x̂ = xq·xs covers it; the
    split itself is checked bit for bit by the exact-emulation assertion of the int8 test."""
    M, K = x.shape
    b = x.reshape(M, K // 32, 32)
    amax = b.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, levels / amax, torch.zeros_like(amax))
    q = torch.round(b * inv)
    assert float(q.abs().max()) <= levels          # the kernels' claim: never rounds past L
    xs = (amax / levels).double()
    return (q.double() * xs).reshape(M, K), xs


def _act_bound(x, w_abs, levels):
    """Σ_b xs_b/2 · Σ_{k∈b}|w_k| for every (row of x, row of w)."""
    _, xs = _xhat(x, levels)                                     # [M, K/32, 1]
    wb = w_abs.reshape(w_abs.shape[0], -1, 32).sum(-1)           # [N, K/32]
    return (xs[..., 0] / 2) @ wb.T


def _slack(x, w_abs):
    return x.shape[1] * FP32_U * (x.abs().double() @ w_abs.T) * 2


SHAPES = [(1, 64, 1), (7, 192, 3), (33, 128, 8), (257, 256, 2)]   # (N, K, M): odd N, 1-8 rows


@pytest.mark.parametrize("n,k,m", SHAPES)
def test_int8_vs_float_and_emulation(use_isa, n, k, m):
    w, x = _w(n, k), _x(m, k)
    q, s = formats.quantize_int8(w)
    wd = formats.dequantize_int8(q, s).double()
    for isa in _isas():
        use_isa(isa)
        with native.per_row():   # gemv.c (from INT8_GEMM_ROWS rows AVX-512 runs the GEMM, below)
            y = native.int8_mm(x, q, s).double()
        xh, _ = _xhat(x, L8)
        # each int32 lane is exact (no offset correction in fp32), so only fp32 sum rounding
        assert bool(((y - xh @ wd.T).abs() <= _slack(xh, wd.abs())).all()), isa
        bound = _act_bound(x, wd.abs(), L8) * (1 + 1e-6) + _slack(x, wd.abs())
        assert bool(((y - x.double() @ wd.T).abs() <= bound).all()), isa


@pytest.mark.parametrize("gs", [32, 64, 128, 256])
@pytest.mark.parametrize("n,m", [(5, 1), (40, 3), (129, 8)])
def test_int4_vs_float_and_emulation(use_isa, gs, n, m):
    k = max(256, gs)
    w, x = _w(n, k, seed=gs), _x(m, k)
    p, s, z = formats.quantize_int4(w, gs)
    wd = formats.dequantize_int4(p, s, z, gs).double()
    wq = (formats.unpack_int4(p).double() - 8) * s.double().repeat_interleave(gs, 1)   # the (q-8)·s part
    wz = z.double().repeat_interleave(gs, 1)
    for isa in _isas():
        use_isa(isa)
        y = native.int4_mm(x, p, s, z, gs).double()
        xh, _ = _xhat(x, L4)
        emu = xh @ wq.T + x.double() @ wz.T
        assert bool(((y - emu).abs() <= _slack(xh, wq.abs()) + _slack(x, wz.abs())).all()), isa
        bound = _act_bound(x, wq.abs(), L4) * (1 + 1e-6) + _slack(x, wq.abs() + wz.abs())
        assert bool(((y - x.double() @ wd.T).abs() <= bound).all()), isa


@pytest.mark.parametrize("n,k,m", SHAPES + [(3, 16, 1), (9, 48, 2)])
def test_bf16_vs_float(use_isa, n, k, m):
    w, x = _w(n, k).to(torch.bfloat16), _x(m, k)
    ref = x.double() @ w.double().T
    for isa in _isas():
        use_isa(isa)
        y = native.bf16_mm(x, w).double()
        assert bool(((y - ref).abs() <= _slack(x, w.double().abs())).all()), isa


def test_bf16_row_alone_equals_row_in_quad(use_isa):
    """float.c runs four rows per pass and the N % 4 tail one by one, with the same per-row
    order: a row's bits do not depend on where it sits (its quad, the tail, alone). K % 32 ==
    16 takes the AVX-512 loop's last 16-column step."""
    n, k, m = 11, 2064, 3            # two quads + a tail of 3
    w, x = _w(n, k, seed=11).to(torch.bfloat16), _x(m, k, seed=5)
    for isa in _isas():
        use_isa(isa)
        y = native.bf16_mm(x, w)
        for i in range(n):           # a one-row weight: the tail path
            assert torch.equal(native.bf16_mm(x, w[i:i + 1]), y[:, i:i + 1]), (isa, i)
        assert torch.equal(native.bf16_mm(x, w[1:]), y[:, 1:]), isa    # every row in another group
        assert torch.equal(native.bf16_mm(x[1:2], w), y[1:2]), isa     # one activation row of three
        # the fp64 check of test_bf16_vs_float can fail: a swapped row pair breaks it
        swapped = native.bf16_mm(x, w[[1, 0, *range(2, n)]]).double()
        assert not bool(((swapped - x.double() @ w.double().T).abs() <= _slack(x, w.double().abs())).all())


def test_isas_agree_and_thread_count_is_bitwise_irrelevant(use_isa):
    n, k, m = 301, 512, 2          # 301 rows: not a multiple of any thread split
    w, x = _w(n, k, seed=7), _x(m, k)
    q, s = formats.quantize_int8(w)
    p, s4, z4 = formats.quantize_int4(w, 64)
    b = w.to(torch.bfloat16)
    outs = {}
    old = torch.get_num_threads()
    try:
        for isa in _isas():
            use_isa(isa)
            for t in (1, 2, 3):
                torch.set_num_threads(t)
                outs[isa, t] = (native.int8_mm(x, q, s), native.int4_mm(x, p, s4, z4, 64), native.bf16_mm(x, b))
    finally:
        torch.set_num_threads(old)
    for isa in _isas():
        for t in (2, 3):
            assert all(torch.equal(a, c) for a, c in zip(outs[isa, 1], outs[isa, t])), (isa, t)
    if AVX512:  # same integer dot products, different fp32 summation order: within the slack
        xh, _ = _xhat(x, L8)
        wd = formats.dequantize_int8(q, s).double().abs()
        d = (outs["avx512", 1][0].double() - outs["avx2", 1][0].double()).abs()
        assert bool((d <= 2 * _slack(xh, wd)).all())
        # bf16: exact products, two summation orders, each within K·u·Σ|x||w| of the exact sum
        d = (outs["avx512", 1][2].double() - outs["avx2", 1][2].double()).abs()
        assert bool((d <= _slack(x, b.double().abs())).all())


def test_linears_use_it_for_decode_and_match(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    w, x = _w(64, 128, seed=4), _x(1, 128)
    for lin, fmt in ((Int8Linear.from_float(w), "int8"), (Int4Linear.from_float(w, 32), "int4")):
        assert choose(fmt, "decode", lin.native_fits()) == "native"
        y = lin(x)
        monkeypatch.setenv(ENV, "native")
        assert torch.equal(lin(x), y)
        monkeypatch.setenv(ENV, "reference")
        bound = _act_bound(x, lin.dequantized().double().abs(), L8 if fmt == "int8" else L4) * (1 + 1e-6) + \
            _slack(x, lin.dequantized().double().abs()) * 4
        assert bool(((y.double() - lin(x).double()).abs() <= bound).all())
        monkeypatch.delenv(ENV)
    # a shape the kernel does not take (K = 96, not a multiple of 64) keeps the old choice
    lin = Int8Linear.from_float(_w(8, 96))
    assert not lin.native_fits() and choose("int8", "decode", lin.native_fits()) != "native"
    monkeypatch.setenv(ENV, "native")
    assert choose("int8", "decode", False) != "native"
    assert lin(_x(1, 96)).shape == (1, 8)
    b = BF16Linear.from_float(w)
    assert torch.allclose(b(x), x @ b.weight_bf16.float().T, rtol=1e-5, atol=1e-5)
    assert b(x[:0]).shape == (0, 64) and Int8Linear.from_float(w)(x[:0]).shape == (0, 64)


def test_compiles_to_one_graph(monkeypatch):
    """The custom ops have fake kernels: Dynamo traces through them without a graph break."""
    monkeypatch.setenv(ENV, "native")
    w = _w(128, 128, seed=5)
    mods = torch.nn.Sequential(Int8Linear.from_float(w), torch.nn.ReLU(), BF16Linear.from_float(w),
                               torch.nn.ReLU(), Int4Linear.from_float(w[:32], 64))
    x = _x(1, 128)
    eager = mods(x)
    comp = torch.compile(mods, backend="aot_eager", fullgraph=True)
    assert torch.equal(comp(x), eager)


def test_cache_is_reused_and_a_missing_compiler_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("OLMO2_CACHE", str(tmp_path))
    native.reset()
    assert native.available() and native._state.get("built")
    so = list((tmp_path / "kernels").glob("*.so"))
    assert len(so) == 1 and not list((tmp_path / "kernels").glob(".*tmp"))
    mtime = so[0].stat().st_mtime_ns
    native.reset()
    assert native.available() and "built" not in native._state      # loaded, not rebuilt
    assert so[0].stat().st_mtime_ns == mtime
    # no compiler: not available, and the linears still work on the existing kernels
    monkeypatch.setenv("OLMO2_CACHE", str(tmp_path / "other"))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    native.reset()
    assert not native.available() and "compiler" in native.reason()
    monkeypatch.delenv(ENV, raising=False)
    lin = Int8Linear.from_float(_w(16, 128))
    assert choose("int8", "decode", lin.native_fits()) != "native"
    x = _x(1, 128)
    ref = x.double() @ lin.dequantized().double().T
    assert torch.allclose(lin(x).double(), ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))
    # a compiler that fails: also just not available
    bad = tmp_path / "badcc"
    bad.write_text("#!/bin/sh\necho 'error: nope' >&2\nexit 1\n")
    bad.chmod(0o755)
    monkeypatch.setenv("CC", str(bad))
    native.reset()
    assert not native.available() and "nope" in native.reason()
    monkeypatch.delenv("CC")
    monkeypatch.setenv("OLMO2_NATIVE", "0")
    native.reset()
    assert not native.available() and "OLMO2_NATIVE=0" in native.reason()


# ---- int8 prefill GEMM (gemm.c) ----

def _gemm_blocks(k):
    """The GEMM's activation block of each column (gemm.c's header)."""
    c = torch.arange(k)
    return (c // 512) * 16 + (c % 64) // 4


def _xhat_gemm(x):
    """x̂ and the per-(row, block) scale as gemm.c computes them (same fp32 ops, ties to even)."""
    M, K = x.shape
    idx = _gemm_blocks(K).expand(M, K)
    nb = int(idx.max()) + 1
    amax = torch.zeros(M, nb).scatter_reduce(1, idx, x.abs(), "amax")
    a = amax.gather(1, idx)
    q = torch.round(x * torch.where(a > 0, L8 / a, torch.zeros_like(a)))
    assert float(q.abs().max()) <= L8
    return q.double() * (a / L8).double(), (amax / L8).double()


def _gemm_act_bound(x, w_abs):
    """Σ_b xs_b/2 · Σ_{k∈b}|w_k| over the GEMM's blocks, for every (row of x, row of w)."""
    _, xs = _xhat_gemm(x)
    idx = _gemm_blocks(x.shape[1])
    wb = torch.zeros(w_abs.shape[0], xs.shape[1], dtype=torch.float64).index_add_(1, idx, w_abs)
    return (xs / 2) @ wb.T


@pytest.mark.parametrize("m,k", [(m, k) for m in (16, 17, 63, 128) for k in (64, 2048)] +
                         [(130, 2048 + 576)])   # two M blocks of gemm.c, two K slices (the last partial)
def test_int8_gemm_vs_float_and_emulation(use_isa, m, k):
    assert m >= native.INT8_GEMM_ROWS       # these row counts take the GEMM
    n = 37                                  # odd: a partial 6-row weight tile
    w, x = _w(n, k, seed=m), _x(m, k, seed=k)
    q, s = formats.quantize_int8(w)
    wd = formats.dequantize_int8(q, s).double()
    bound = _gemm_act_bound(x, wd.abs()) * (1 + 1e-6) + _slack(x, wd.abs())
    if AVX512:
        use_isa("avx512")
        native.reset()   # a first call that is not preceded by available() loads the library itself
        y = native.int8_mm(x, q, s).double()
        xh, _ = _xhat_gemm(x)
        # exact integer lanes; the slack covers fp32 sums and the int32 -> fp32 convert
        assert bool(((y - xh @ wd.T).abs() <= _slack(xh, wd.abs())).all())
        assert bool(((y - x.double() @ wd.T).abs() <= bound).all())
    # AVX2: the per-row kernel whatever the row count, within its own (contiguous-block) bound
    use_isa("avx2")
    y2 = native.int8_mm(x, q, s)
    with native.per_row():
        assert torch.equal(y2, native.int8_mm(x, q, s))
    bound2 = _act_bound(x, wd.abs(), L8) * (1 + 1e-6) + _slack(x, wd.abs())
    assert bool(((y2.double() - x.double() @ wd.T).abs() <= bound2).all())
    if AVX512:   # the two paths: each within its activation bound of the exact product
        assert bool(((y - y2.double()).abs() <= bound + bound2).all())


def test_int8_gemm_threads_bitwise_and_prefill_choice(use_isa, monkeypatch):
    n, k, m = 301, 3136, 19    # 301 rows: no thread split is even; K: two slices, a partial group
    w, x = _w(n, k, seed=9), _x(m, k, seed=3)
    q, s = formats.quantize_int8(w)
    old = torch.get_num_threads()
    try:
        for isa in _isas():
            use_isa(isa)
            outs = []
            for t in (1, 2, 3):
                torch.set_num_threads(t)
                outs.append(native.int8_mm(x, q, s))
            assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2]), isa
    finally:
        torch.set_num_threads(old)
    # auto: native runs int8 prefill wherever it built (the GEMM where its VNNI path runs),
    # and no kernel's packed copy of the weight is built (prepare() packs what choose() picks)
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("OLMO2_NATIVE_ISA", raising=False)   # the CPU's best path
    native.reset()
    lin = Int8Linear.from_float(w)
    picked = choose("int8", "prefill", lin.native_fits())
    assert (picked == "native") == native.available()
    use_isa("avx2")   # an AVX2 CPU runs the per-row kernel (its fbgemm alternative loses quality)
    assert choose("int8", "prefill", lin.native_fits()) == "native"
    assert choose("int8", "decode", lin.native_fits()) == "native"
    if AVX512:
        use_isa("avx512")
        lin.prepare()
        assert not lin._packed
        y = lin(x)
        monkeypatch.setenv(ENV, "native")
        assert torch.equal(lin(x), y) and not lin._packed
        # under torch.compile the custom op takes the GEMM too (the row count is static)
        comp = torch.compile(lin, backend="aot_eager", fullgraph=True)
        assert torch.equal(comp(x), y)


# ---- int4 prefill GEMM (gemm4.c) ----

def _int4_case(n, k, m, gs, seed):
    w, x = _w(n, k, seed=seed), _x(m, k, seed=k + m)
    p, s, z = formats.quantize_int4(w, gs)
    wq = (formats.unpack_int4(p).double() - 8) * s.double().repeat_interleave(gs, 1)   # the (q-8)·s part
    wz = z.double().repeat_interleave(gs, 1)
    return x, (p, s, z), wq, wz, formats.dequantize_int4(p, s, z, gs).double()


def _int4_paths(use_isa, monkeypatch):
    """(isa, amx) for each int4 prefill path this CPU runs: gemm4_amx.c (where AMX-INT8 is
    granted), gemm4.c (AVX-512, OLMO2_NATIVE_AMX=0), gemv.c per row (AVX2)."""
    for isa in _isas():
        use_isa(isa)
        native.reset()   # a first call not preceded by available() loads the library itself
        amxs = ["1", "0"] if isa == "avx512" else ["0"]
        for amx in amxs:
            monkeypatch.setenv("OLMO2_NATIVE_AMX", amx)
            if amx == "1" and not native.amx_available():
                continue
            assert native.amx_available() == (amx == "1")
            yield isa, amx
    monkeypatch.delenv("OLMO2_NATIVE_AMX")


@pytest.mark.parametrize("gs", [32, 128])
@pytest.mark.parametrize("m,k", [(m, k) for m in (16, 17, 63, 128) for k in (128, 2048)])
def test_int4_gemm_vs_float_emulation_and_rows(use_isa, monkeypatch, m, k, gs):
    assert m >= native.INT4_GEMM_ROWS       # these row counts take the GEMM on AVX-512
    n = 37                                  # odd: a partial 4-row weight tile
    x, (p, s, z), wq, wz, wd = _int4_case(n, k, m, gs, seed=m + gs)
    xh, _ = _xhat(x, L4)
    emu = xh @ wq.T + x.double() @ wz.T
    slack = _slack(xh, wq.abs()) + _slack(x, wz.abs())
    # |x - x̂| <= xs_b/2 per element (round to nearest) on the (q-8)·s part; the zero-point
    # term uses the exact x: |y - x @ W^T| <= Σ_b xs_b/2 · Σ_{k∈b}|(q-8)·s| + fp32 slack
    bound = _act_bound(x, wq.abs(), L4) * (1 + 1e-6) + _slack(x, wq.abs() + wz.abs())
    for isa, amx in _int4_paths(use_isa, monkeypatch):
        y = native.int4_mm(x, p, s, z, gs)
        with native.per_row():
            y0 = native.int4_mm(x, p, s, z, gs)
        if isa == "avx2":   # no GEMM there: the per-row kernel at every row count
            assert torch.equal(y, y0)
        # exact integer lanes and the same x̂: each kernel within its fp32 slack of the
        # emulation, so of each other within twice that (only the summation order differs)
        assert bool(((y.double() - emu).abs() <= slack).all()), (isa, amx)
        assert bool(((y.double() - y0.double()).abs() <= 2 * slack).all()), (isa, amx)
        assert bool(((y.double() - x.double() @ wd.T).abs() <= bound).all()), (isa, amx)


def test_int4_gemm_threads_rows_bitwise_and_prefill_choice(use_isa, monkeypatch):
    n, k, m, gs = 301, 1152, 37, 128   # 301: no even thread split; K/G = 9 groups (padded to 16)
    x, (p, s, z), *_ = _int4_case(n, k, m, gs, seed=11)
    old = torch.get_num_threads()
    try:
        for isa, amx in _int4_paths(use_isa, monkeypatch):
            outs = []
            for t in (1, 2, 3):
                torch.set_num_threads(t)
                outs.append(native.int4_mm(x, p, s, z, gs))
            assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2]), (isa, amx)
            # a row's result does not depend on the other rows of the call (nor on its tile)
            assert torch.equal(native.int4_mm(x[5:22], p, s, z, gs), outs[0][5:22]), (isa, amx)
            assert torch.equal(native.int4_mm(x, p[:9], s[:9], z[:9], gs), outs[0][:, :9]), (isa, amx)
        # 8-15 rows take gemm4.c even where AMX runs (its tiles hold 16 rows)
        y8 = {amx: native.int4_mm(x[:8], p, s, z, gs) for isa, amx in _int4_paths(use_isa, monkeypatch)
              if isa == "avx512"}
        assert all(torch.equal(v, y8["0"]) for v in y8.values())
    finally:
        torch.set_num_threads(old)
    # auto: native runs int4 prefill (the GEMM where its VNNI path runs) and decode, and no
    # packed copy of the weight is built (prepare() packs what choose() picks)
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("OLMO2_NATIVE_ISA", raising=False)
    monkeypatch.delenv("OLMO2_NATIVE_AMX", raising=False)
    native.reset()
    lin = Int4Linear.from_float(_w(n, k, seed=11), gs)
    assert (choose("int4", "prefill", lin.native_fits()) == "native") == native.available()
    assert (choose("int4", "decode", lin.native_fits()) == "native") == native.available()
    if AVX512:
        use_isa("avx512")
        lin.prepare()
        assert not lin._packed
        y = lin(x)
        assert torch.equal(y, native.int4_mm(x, lin.qweight, lin.scales, lin.zeros, gs))
        with native.per_row():
            assert not torch.equal(lin(x), y)      # the GEMM ran above, not the per-row kernel
        # under torch.compile the custom op takes the GEMM too (the row count is static)
        comp = torch.compile(lin, backend="aot_eager", fullgraph=True)
        assert torch.equal(comp(x), y)
