"""Which matmul kernel runs a quantized linear, chosen at run time per CPU and per phase.

    OLMO2_QUANT_KERNEL=auto        (default) the measured best for this CPU, per phase
    OLMO2_QUANT_KERNEL=reference   the pure-PyTorch path everywhere (dequantize, F.linear)
    OLMO2_QUANT_KERNEL=aten        aten's int8/int4 weight-only kernels wherever they apply
    OLMO2_QUANT_KERNEL=fbgemm      fbgemm's dynamic W8A8 kernel for int8
    OLMO2_QUANT_KERNEL=mkldnn      oneDNN's bf16 linear on a weight reordered once (bf16)
    OLMO2_QUANT_KERNEL=native      olmo2's own C kernels (olmo2/quant/native.py) in every phase

A phase is decode (GEMV: one row of activations per call, bandwidth-bound) or prefill
(GEMM: many rows, compute-bound); the two have different winners, so a linear picks per
call from the row count (`PREFILL_ROWS`). Kernels a CPU or build cannot run are never
chosen: the env override falls back to "reference" for a format it does not cover.

Why these candidates (measured by benchmarks/quant_kernels.py; table in
benchmarks/RESULTS.md, section "Quantized kernels"):
- `aten._weight_int8pack_mm` / `_weight_int4pack_mm_for_cpu` are weight-only and exact
  up to activation rounding, but **only fast with bf16 activations** (fp32 activations
  take a scalar path 10-30x slower), so we cast x to bf16 around them. Their fast code is
  compiled for AVX-512; on an AVX2-only CPU (ATEN_CPU_CAPABILITY=avx2 reproduces its
  dispatch here) they are not chosen unless measured to be fast there.
- fbgemm's `quantized.linear_dynamic` quantizes the activation per tensor to uint8 and
  multiplies with VNNI (AVX-512) or vpmaddubsw (AVX2): several times aten's prefill
  speed. It changes the numerics (activation quantization), which the quality report
  measures; it is deprecated upstream, so it is optional and checked for at run time.
- For bf16, oneDNN's `mkldnn._linear_pointwise` on a weight reordered once into its
  blocked layout (`mkldnn._reorder_linear_weight`, what Inductor's freezing emits) streams
  the weight ~1.4x faster than eager `F.linear` (which reorders per call) at batch 1 on
  the Intel host (docs/cpu-kernels.md: 114 vs 147 ms per 1B token), with identical
  outputs at one row (tests/test_quant_linear.py). It is now the fallback for a machine
  where olmo2's kernels did not build: with them, bf16 decode is native and bf16 prefill
  aten's F.linear, both faster than it on the plain weight (`choose`).
- `native` (olmo2/quant/native/: gemv.c int8/int4, float.c bf16; built on first use;
  OLMO2_NATIVE=0 disables it): our decode GEMVs for int8/int4/bf16 with AVX-512 and AVX2
  code paths chosen from the CPU flags. bf16 keeps x in fp32 and widens the weight exactly
  (a 16-bit shift); it runs the fp32 GEMV's loop (four rows per pass sharing each x load,
  L2 prefetch of the next quad): 26.9 vs 19.4 GB/s for the former one-row kernel on the
  1B's decode GEMVs, 89% vs 64% of the read probe, 1.40x per round (2 threads, idle;
  benchmarks/RESULTS.md, "Native bf16 GEMV"). aten's int8/int4 kernels reach 30-41% of the memory bandwidth at one row
  and are slow on AVX2-only CPUs; fbgemm's per-tensor activation quantization cost 2%
  top-1 agreement. The native kernels quantize the activation per block of 32 columns:
  int8 to ~15 bits split into two int8 digits (two vpdpbusd / vpmaddubsw per weight load;
  one 8-bit digit, llama.cpp's Q8_0 scheme, cost ~0.5 points of top-1 on the demo model),
  int4 to one int8 digit; they stream the canonical weights as stored (no packed copy).
  Under `auto` it runs decode, plus int4 prefill (on AVX2 too: 54 vs the reference
  path's 17 GFLOP/s at 128 rows) and int8 prefill (no packed copy in either);
  other prefill stays on aten/fbgemm/oneDNN, which reuse each weight load across
  rows (bf16 on a CPU with bf16 dot products: aten's F.linear on the same plain weight).
  int4 prefill runs gemm4.c from native.INT4_GEMM_ROWS (8) rows on AVX-512 VNNI: a
  register-blocked GEMM (4 x 4 tiles; each weight chunk unpacked once per tile) with the
  decode kernel's x̂, ~2x gemv.c's per-row int4 kernel per CPU-second at 8-128 rows on the
  1B's shapes (benchmarks/RESULTS.md, "Native int4 prefill GEMM"); the per-row kernel had
  done 105 vs aten's 69 GFLOP/s at 128 rows (1 thread, same run). Where the CPU has
  AMX-INT8 (and the OS grants it), gemm4_amx.c does the integer products on the tile unit
  instead, ~2x gemm4.c again (same x̂; OLMO2_NATIVE_AMX=0 turns it off).
  int8 prefill runs gemm.c, a register-blocked GEMM (4 x 6 tiles of vpdpbusd on blocks
  whose int32 lanes span 8 chunks, so one convert + FMA per 8): at 128 rows, 1 thread, on
  the 1B's shapes, 166-189 GFLOP/s vs aten's 81-87 (2026-11-29, benchmarks/RESULTS.md
  "Native int8 prefill GEMM"); gemv.c's per-row kernel did 54 vs 68. It keeps the decode
  kernel's ~15-bit activation, so the prefill rows of the quality report match decode's
  instead of aten's bf16-rounded ones. The GEMM is AVX-512 only: an AVX2 version
  (vpmaddubsw, ~55 GFLOP/s here under OLMO2_NATIVE_ISA=avx2) was slower than the per-row
  kernel, so AVX2 CPUs run int8 prefill on the per-row kernel, for quality (see `choose`).
  A shape it does not take (K not a multiple of its block) or a machine where it did not
  build keeps the choice below.
- fp32 (`choose("fp32", ...)`, olmo2/quant/f32.py's NativeF32Linear: plain float models,
  `--quant none`): "native" (olmo2/quant/native/float.c) for decode on CPUs without AVX-512
  (the AMD Zen 3 kind, where MKL's fp32 GEMV streamed ~13.6 GB/s vs llama.cpp's 22-25:
  docs/cpu-baseline.md), or under OLMO2_QUANT_KERNEL=native; else "torch" (F.linear: MKL).
  On this Intel host MKL's sgemv is at the bandwidth, so nothing changes here by default;
  the AVX2 loop's speed on AMD is unmeasured (benchmarks/RESULTS.md, "Native fp32 GEMV").
  OLMO2_NATIVE_ISA=avx2 makes this host choose as the AMD kind does (tests, benchmarks).
- The reference path materialises the dequantized weight per call: slow, but it runs on
  any CPU and any PyTorch build, and it is what the tests compare every kernel against.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

KERNELS = ("auto", "reference", "aten", "fbgemm", "mkldnn", "native")
ENV = "OLMO2_QUANT_KERNEL"
# Row count from which a call counts as prefill (GEMM). A decode step of a batch of B
# requests has B rows; continuous batching rarely exceeds 16.
PREFILL_ROWS = 16


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@dataclass(frozen=True)
class CpuKind:
    """What the kernel choice depends on: the ISA torch dispatches to and the bf16/VNNI units."""
    capability: str        # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    bf16: bool             # native bf16 dot products (avx512_bf16 or AMX): bf16 activations are cheap
    vnni: bool             # int8 dot products (avx512_vnni / avx_vnni)

    @property
    def avx512(self) -> bool:
        return self.capability.upper().startswith("AVX512")


@functools.lru_cache(maxsize=1)
def cpu_kind() -> CpuKind:
    """This process's CPU as the kernel choice sees it (ATEN_CPU_CAPABILITY is honoured)."""
    flags = cpu_flags()
    cap = torch.backends.cpu.get_cpu_capability()
    return CpuKind(capability=cap, bf16=bool({"avx512_bf16", "amx_bf16"} & flags) and cap.upper().startswith("AVX512"),
                   vnni=bool({"avx512_vnni", "avx_vnni"} & flags))


@functools.lru_cache(maxsize=1)
def fbgemm_available() -> bool:
    """Whether this torch build has the fbgemm quantized engine (x86 builds do)."""
    try:
        return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=1)
def mkldnn_available() -> bool:
    """oneDNN's prepacked linear ops exist in this torch build."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def requested() -> str:
    """The kernel the environment asks for; an unknown value is a one-line error.
    (Read on every quantized linear call, so that benchmarks can switch kernels in one
    process: the imports stay off this path, they cost as much as the rest of it.)"""
    v = os.environ.get(ENV, "auto")
    if v in KERNELS:
        return v
    v = v.strip().lower() or "auto"
    if v not in KERNELS:
        from olmo2.errors import ConfigError
        raise ConfigError(f"{ENV}={v!r}: use one of {', '.join(KERNELS)}")
    return v


def native_available() -> bool:
    """olmo2's own kernels built and loaded for this CPU (olmo2/quant/native.py)."""
    return _native_module().available()


@functools.lru_cache(maxsize=1)
def _native_module():
    from olmo2.quant import native  # lazily: native imports torch.library machinery
    return native


def _avx2_only() -> bool:
    """No AVX-512 here (the AMD Zen 3 kind), or OLMO2_NATIVE_ISA=avx2 asks this host to
    behave as such a CPU (the native library then runs its AVX2 paths too)."""
    return "avx512f" not in cpu_flags() or os.environ.get("OLMO2_NATIVE_ISA", "").strip().lower() == "avx2"


def _choose_fp32(want: str, phase: str, native_fits: bool) -> str:
    """fp32 weights (module docstring): "native" or "torch". Prefill stays on torch's GEMM,
    which reuses each weight load across rows; the env/CPU test runs before
    native_available() so a host that keeps MKL never builds the library for it."""
    if phase != "decode" or not native_fits:
        return "torch"
    if (want == "native" or (want == "auto" and _avx2_only())) and native_available():
        return "native"
    return "torch"


def choose(fmt: str, phase: str, native_fits: bool = True) -> str:
    """The kernel for `fmt` ("int8", "int4", "bf16", "fp32") in `phase` ("decode" or
    "prefill"); `native_fits`: whether the module's shape suits the native kernel
    (native.fits). fp32 answers "native" or "torch" (plain F.linear)."""
    want = requested()
    if fmt == "fp32":
        return _choose_fp32(want, phase, native_fits)
    kind = cpu_kind()
    native_ok = native_fits and fmt in ("int8", "int4", "bf16") and native_available()
    if want == "native":
        if native_ok:
            return "native"
        want = "auto"
    if want == "reference":
        return "reference"
    if want == "fbgemm":
        return "fbgemm" if fmt == "int8" and fbgemm_available() else "reference"
    if want == "aten":
        return "aten" if fmt in ("int8", "int4", "bf16") else "reference"
    if want == "mkldnn":
        return "mkldnn" if fmt == "bf16" and mkldnn_available() else "reference"
    # auto: the measured winners (benchmarks/RESULTS.md, "Quantized kernels").
    if fmt == "int4" and native_ok:
        # int4 prefill too: at 128 rows even the per-row kernel did 105 GFLOP/s vs aten's 69
        # (1 thread, same run), and gemm4.c's GEMM (AVX-512, from 8 rows) ~2x that
        # (benchmarks/RESULTS.md); and then aten's packed copy of the
        # weights is never built: an int4 model holds one copy instead of two. On an
        # AVX2-only CPU the alternative is the reference path (dequantize the whole weight
        # per call): its AVX2 code, forced on the Intel host (OLMO2_NATIVE_ISA=avx2, 1
        # thread, 2026-11-29), did 54 vs 17 GFLOP/s at 128 rows and 72 vs 3 at 16.
        return "native"
    if fmt == "int8" and phase == "prefill" and native_ok:
        # AVX-512: gemm.c's VNNI GEMM, ~2x aten's int8 prefill, with decode's activation
        # precision (docstring). AVX2 (gemv.c's per-row kernel): chosen for quality, not
        # speed. The one fast alternative there is fbgemm, which quantizes the activation
        # per tensor (7 bits on a CPU without VNNI) and lost the quality goal on the demo
        # model (97.15% top-1 with 8 bits, goal 99%; native: 99.28%). Its AVX2 speed could
        # not be timed here (on this Intel host fbgemm takes its VNNI path: 324 vs native
        # AVX2's 53 GFLOP/s per CPU-second at 128 rows, 1 thread); 53 per core is about what
        # llama.cpp's Q8_0 prompt reaches on the AMD host (~44 tok/s on 2 threads,
        # docs/cpu-baseline.md), unmeasured there.
        return "native"
    if phase == "decode" and native_ok:
        # bf16 too, on every CPU: float.c's four-row GEMV beat oneDNN's reordered linear at
        # 1B decode, 1.12-1.14x per round (median 8.39 vs 7.41 tok/s; aten 6.15; the former
        # one-row kernel 6.48, i.e. 0.86-0.90x oneDNN), 2 threads, 4 alternating rounds in one
        # process, idle Intel host, 2026-11-29 22:35 UTC (benchmarks/RESULTS.md, "Native bf16
        # GEMV"). It reads the plain weight, which prefill reuses.
        return "native"
    if fmt == "int8":
        # fbgemm was faster in benchmarks/quant_kernels.py (decode 2.1x, prefill 7x aten's
        # int8 kernel, same run), but its activation quantization broke the quality goal on
        # the demo model (olmo2 quantize --report, 2026-11-29: top-1 agreement with bf16
        # 97.15% vs aten's weight-only 99.08%, goal >= 99%). So weight-only aten where its
        # fast code runs (AVX-512); fbgemm only on CPUs where it is the one fast int8 path.
        if kind.avx512:
            return "aten"
        return "fbgemm" if fbgemm_available() else "reference"
    if fmt == "int4":
        return "aten" if kind.avx512 else "reference"
    if fmt == "bf16":
        # bf16 compute only where the CPU has bf16 dot products; elsewhere it is emulated
        # (~7x slower than fp32 on Zen 3), so upcast the weight instead.
        if not kind.bf16:
            return "reference"
        if native_ok:
            # decode is native (above) on the plain weight; aten's bf16 F.linear prefills
            # from that same weight, and beat oneDNN's reordered copy at a 128-token 1B
            # prompt: 1.18-1.44x per round (265 vs 215 tok/s, 2 threads, 4 alternating
            # rounds, same host and hour), so no second, reordered copy is ever built.
            return "aten"
        # without olmo2's kernels: oneDNN in both phases (at one row it streams the weight
        # ~1.4x faster than F.linear, which reorders per call; prefill shares its copy)
        return "mkldnn" if mkldnn_available() else "aten"
    raise ValueError(f"unknown quantized format {fmt!r}")


@contextlib.contextmanager
def forced(kernel: str):
    """Run every quantized linear with `kernel` inside the block (the env override, set and
    restored), whatever the row count: e.g. to score whole sequences with the decode kernel."""
    old = os.environ.get(ENV)
    os.environ[ENV] = kernel
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def phase_of(rows: int) -> str:
    return "prefill" if rows >= PREFILL_ROWS else "decode"
