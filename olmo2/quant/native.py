"""olmo2's own CPU matmul kernels (olmo2/quant/native/: gemv.c for int8/int4 decode, gemm.c for
int8 prefill, gemm4.c for int4 prefill (gemm4_amx.c on CPUs with AMX-INT8), float.c for bf16
decode and fp32 decode on AVX2-only CPUs), built on first use.

    from olmo2.quant import native
    if native.available():
        y = native.int8_mm(x, qweight, scales)           # fp32 [M, N] from fp32/bf16 x [M, K]
        y = native.int4_mm(x, packed, scales, zeros, 128)
        y = native.bf16_mm(x, weight_bf16)
        y = native.f32_mm(x, weight_fp32)                 # olmo2/quant/f32.py's NativeF32Linear

    OLMO2_NATIVE=0            never build or use the library (kernels.py falls back)
    OLMO2_NATIVE_ISA=avx2     force the AVX2 code path on an AVX-512 CPU (what AMD Zen 3 runs)
    OLMO2_NATIVE_AMX=0        int4 prefill on AVX-512 VNNI (gemm4.c) even where AMX-INT8 runs
                              (read per call: tests and benchmarks compare the two)
    CC=...                    the C compiler (default: cc, then gcc)

Build: `$CC -O3 -shared -fPIC -fopenmp gemv.c gemm.c gemm4.c gemm4_amx.c float.c decode.c` (one library) into the per-user cache
(`$OLMO2_CACHE`, `$XDG_CACHE_HOME/olmo2` or `~/.cache/olmo2`, under `kernels/`), named by
the sha256 of the sources, the compiler's `--version` and the flags, so a changed source
or compiler builds anew and an unchanged one is never rebuilt. The .so is written to a
temp name and renamed (olmo2.fsio.atomic_path), so processes racing to build it each
produce a whole file and the last rename wins. No `-march=native`: the SIMD functions
carry their own target attributes and the library reports which ISA the CPU runs, so a
cache shared by different CPUs stays safe. Any failure — no compiler, a build error, a
CPU without AVX2+FMA, a non-x86 machine — makes `available()` False (`reason()` says
why) and the caller keeps the aten/reference kernels; it never raises.

OpenMP: the library links `libgomp.so.1` by soname; torch has already loaded its own
bundled copy under that soname, so the dynamic loader binds ours to it and one thread
pool serves both (two OpenMP runtimes in one process would each spin on the 2 cores).

torch.compile: eager calls go straight to ctypes (a custom op's Python dispatch costs
more than a decode-sized GEMV's tail). Under compile the same functions are reached
through `torch.ops.olmo2.native_*` custom ops with fake implementations, so a compiled
decode step stays one graph. ctypes releases the GIL for the call.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import torch

SOURCES = tuple(Path(__file__).with_name("native") / f for f in ("gemv.c", "gemm.c", "gemm4.c", "gemm4_amx.c", "float.c",
                                                                          "decode.c"))
# headers the sources include: not compiled on their own, but part of the build hash
HEADERS = tuple(Path(__file__).with_name("native") / f for f in ("xq4.h",))
FLAGS = ("-O3", "-shared", "-fPIC", "-fopenmp", "-std=gnu11")
ABI = 9               # olmo2_native_abi() of the source this module speaks to (9: + decode.c's glue)
# Rows from which int8_mm runs gemm.c's register-blocked GEMM (AVX-512 VNNI only) instead of
# gemv.c's per-row kernel. Measured on the 8192x2048 shape with the weights streamed from
# memory (1 thread): at 1-2 rows the GEMV is 1.2-1.3x faster (it prefetches for streaming),
# at 4 rows they tie, at 8 the GEMM is 1.34x faster and at 16 1.57x, so batched decode steps
# of 8+ requests take it too. On AVX2 the per-row kernel stays at every row count (gemm.c).
INT8_GEMM_ROWS = 8
# Rows from which int4_mm runs gemm4.c's register-blocked GEMM (AVX-512 VNNI only) instead
# of gemv.c's per-row int4 kernel: measured in benchmarks/RESULTS.md, "Native int4 prefill GEMM".
INT4_GEMM_ROWS = 8
# Rows from which that GEMM runs on AMX tiles (gemm4_amx.c) where the CPU has them: its tiles
# hold 16 activation rows, so at 8 rows it was slower than gemm4.c (132 vs 175 GFLOP/s per
# CPU-second, 1 thread, weights streamed) and at 16 faster (251 vs 198; RESULTS.md).
INT4_AMX_ROWS = 16
_gemm_rows = [INT8_GEMM_ROWS, INT4_GEMM_ROWS]   # per_row() lifts both: the quality report's decode rows
ISAS = {"avx2": 1, "avx512": 2}
# Shapes the C entry points take (checked here so a call never returns an error code).
INT8_K_MULTIPLE, INT4_K_MULTIPLE, BF16_K_MULTIPLE, F32_K_MULTIPLE = 64, 128, 16, 16
INT4_GROUPS = (32, 64, 128, 256)

_state: dict[str, object] = {}


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return cc if shutil.which(cc) else None
    return shutil.which("cc") or shutil.which("gcc")


def _cache_dir() -> Path:
    from olmo2.data.sources import cache_root
    return cache_root() / "kernels"


def library_path(cc: str) -> Path:
    """Where the library built by `cc` from the current source lives in the cache."""
    ver = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    h = hashlib.sha256(b"".join(f.read_bytes() for f in SOURCES + HEADERS) + ver.encode() + " ".join(FLAGS).encode())
    h = h.hexdigest()[:20]
    return _cache_dir() / f"gemv-{h}.so"


def _build(cc: str, out: Path) -> None:
    from olmo2.fsio import atomic_path
    with atomic_path(out) as tmp:
        r = subprocess.run([cc, *FLAGS, "-o", str(tmp), *map(str, SOURCES), "-lm"], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            lines = (r.stderr or r.stdout).strip().splitlines()
            first = next((ln for ln in lines if "error" in ln), lines[0] if lines else "")
            raise OSError(f"{cc} failed (exit {r.returncode}): {first.strip()}")


def _load() -> ctypes.CDLL:
    if os.environ.get("OLMO2_NATIVE", "1").strip() == "0":
        raise OSError("disabled by OLMO2_NATIVE=0")
    if os.uname().machine not in ("x86_64", "AMD64"):
        raise OSError(f"no kernels for {os.uname().machine}")
    cc = _compiler()
    if cc is None:
        raise OSError(f"no C compiler ({os.environ.get('CC') or 'cc/gcc'} not found)")
    path = library_path(cc)
    if not path.exists():
        _build(cc, path)
        _state["built"] = str(path)
    lib = ctypes.CDLL(str(path))
    if lib.olmo2_native_abi() != ABI:
        raise OSError(f"{path}: ABI {lib.olmo2_native_abi()} != {ABI}")
    i, f, p = ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p  # pointers as plain ints: cheapest to pass
    lib.olmo2_int8_mm.argtypes = [i, i, f, i, i, p, p, i, f]
    lib.olmo2_int8_prefill_mm.argtypes = [i, i, f, i, i, p, p, i, f]
    lib.olmo2_int4_mm.argtypes = [i, i, f, i, i, p, p, p, i, i, f]
    lib.olmo2_int4_prefill_mm.argtypes = [i, i, f, i, i, p, p, p, i, i, f]
    lib.olmo2_int4_prefill_amx_mm.argtypes = [i, i, f, i, i, p, p, p, i, i, f]
    lib.olmo2_amx_available.argtypes = []
    lib.olmo2_bf16_mm.argtypes = [i, i, f, i, i, p, i, f]
    lib.olmo2_f32_mm.argtypes = [i, i, f, i, i, p, i, f]
    # decode.c (olmo2/infer/fused.py): pointers, ints and fp32 scalars
    fl = ctypes.c_float
    lib.olmo2_attn_step.argtypes = [i, p, p, p, p, p, fl, p, p, p, p, i, i, i, i, i, fl, p]
    lib.olmo2_add_rmsnorm.argtypes = [p, p, p, fl, i, p]
    lib.olmo2_rmsnorm.argtypes = [p, p, fl, i, p]
    lib.olmo2_silu_mul.argtypes = [p, p, i, p]
    for fn in (lib.olmo2_int8_mm, lib.olmo2_int8_prefill_mm, lib.olmo2_int4_mm, lib.olmo2_int4_prefill_mm,
               lib.olmo2_int4_prefill_amx_mm, lib.olmo2_amx_available, lib.olmo2_bf16_mm, lib.olmo2_f32_mm,
               lib.olmo2_attn_step, lib.olmo2_add_rmsnorm, lib.olmo2_rmsnorm, lib.olmo2_silu_mul):
        fn.restype = ctypes.c_int
    _state["path"] = str(path)
    return lib


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    try:
        lib = _load()
    except Exception as e:  # noqa: BLE001 - any failure to build or load means "not available", never a crash
        _state["reason"] = str(e)
        return None
    best = lib.olmo2_native_best_isa()
    want = os.environ.get("OLMO2_NATIVE_ISA", "").strip().lower()
    if want and want not in ISAS:
        _state["reason"] = f"OLMO2_NATIVE_ISA={want!r}: use avx2 or avx512"
        return None
    isa = min(best, ISAS[want]) if want else best
    if isa == 0:
        _state["reason"] = "this CPU has neither AVX-512 VNNI nor AVX2+FMA"
        return None
    _state["isa"] = isa
    return lib


def available() -> bool:
    """Whether the library built, loaded and has a code path for this CPU."""
    return _lib() is not None


def reason() -> str:
    """Why the library is not available ('' when it is)."""
    return "" if available() else str(_state.get("reason", ""))


def isa() -> str:
    """The code path in use: 'avx512' (VNNI), 'avx2', or '' when not available."""
    return {1: "avx2", 2: "avx512"}.get(_state.get("isa", 0), "") if available() else ""


def reset() -> None:
    """Forget the loaded library (tests: to re-read OLMO2_NATIVE*/CC)."""
    _lib.cache_clear()
    _state.clear()


def fits(fmt: str, in_features: int, group_size: int | None = None) -> bool:
    """Whether the kernel for `fmt` takes a K = in_features weight (else the caller's fallback)."""
    if fmt == "int8":
        return in_features % INT8_K_MULTIPLE == 0
    if fmt == "int4":
        return in_features % INT4_K_MULTIPLE == 0 and group_size in INT4_GROUPS and in_features % group_size == 0
    if fmt == "bf16":
        return in_features % BF16_K_MULTIPLE == 0
    if fmt == "fp32":
        return in_features % F32_K_MULTIPLE == 0
    return False


def _ptr(t: torch.Tensor) -> int:
    if not t.is_contiguous():  # the C code reads dense rows; canonical buffers always are
        raise ValueError("native kernels need contiguous tensors")
    return t.data_ptr()


def _x32(x: torch.Tensor) -> torch.Tensor:
    if x.dtype is torch.float32 and x.is_contiguous():
        return x
    return x.to(torch.float32).contiguous()


def _check(rc: int, what: str) -> None:
    if rc != 0:  # shapes are checked by fits(); this is a bug or out of memory
        raise RuntimeError(f"native {what} kernel failed (code {rc})")


def _mm(entry: str, x: torch.Tensor, N: int, *weights: int) -> torch.Tensor:
    """y [M, N] fp32 = the C entry point `olmo2_<entry>_mm` on x (made fp32 and dense) and the
    weight pointers/ints in `weights`, which sit between K and N in every entry's signature."""
    lib = _lib()
    x = _x32(x)
    M, K = x.shape
    y = torch.empty(M, N, dtype=torch.float32)
    if M == 0:  # an empty batch: nothing to compute (the C entry points refuse M = 0)
        return y
    fn = getattr(lib, f"olmo2_{entry}_mm")
    _check(fn(_state["isa"], torch.get_num_threads(), _ptr(x), M, K, *weights, N, _ptr(y)), entry)
    return y


def bind(entry: str, x: torch.Tensor, y: torch.Tensor, weights: tuple) -> functools.partial:
    """`olmo2_<entry>_mm` over fixed dense fp32 x [M, K] → y [M, N] and fixed weights
    (tensors or ints, in the entry's order: a module's `decode_binding()`), at the current
    thread count, as a call with no arguments returning the C status (0 = done). What a
    decode step calls 113 times a token: building the arguments per call (checks, the
    output's allocation, the module's kernel choice) cost ~50 us, more than a small GEMV.
    The caller keeps x, y and the weights alive and rebinds when any of them changes."""
    lib = _lib()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {reason()}")
    ws = [_ptr(w) if isinstance(w, torch.Tensor) else int(w) for w in weights]
    return functools.partial(getattr(lib, f"olmo2_{entry}_mm"), _state["isa"], torch.get_num_threads(), _ptr(x),
                             x.shape[0], x.shape[1], *ws, y.shape[1], _ptr(y))


def int8_gemm_available() -> bool:
    """Whether int8_mm runs gemm.c's GEMM from INT8_GEMM_ROWS rows (and int4_mm gemm4.c's from
    INT4_GEMM_ROWS: both need the AVX-512 VNNI path in use); otherwise gemv.c's per-row
    kernels take every row count. The one place this rule lives: olmo2/quant/report.py asks
    it whether prefill and decode numerics differ (int4's GEMM keeps decode's x̂ and differs
    only in fp32 summation order, so the report needs no decode row for it)."""
    _lib()  # loads the library (and sets _state["isa"]) on a first call made before available()
    return _state.get("isa") == ISAS["avx512"]


def _int8(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    # the row count picks the kernel (a static shape under torch.compile: one graph each)
    gemm = x.shape[0] >= _gemm_rows[0] and int8_gemm_available()
    return _mm("int8_prefill" if gemm else "int8", x, w.shape[0], _ptr(w), _ptr(s))


@contextlib.contextmanager
def per_row():
    """int8_mm and int4_mm run the decode kernels (gemv.c) whatever the row count inside the
    block: to score whole sequences with the numerics that generation's one-token steps have
    (int8's activation blocks differ from the GEMM's; olmo2/quant/report.py's decode rows),
    and to time the per-row kernels against the GEMMs (benchmarks)."""
    old = list(_gemm_rows)
    _gemm_rows[:] = [1 << 62] * len(_gemm_rows)
    try:
        yield
    finally:
        _gemm_rows[:] = old


def amx_available() -> bool:
    """Whether int4 prefill runs gemm4_amx.c: the AVX-512 path is in use, the CPU has
    AMX-TILE and AMX-INT8, the OS granted this process the tile state (the library asks once),
    and OLMO2_NATIVE_AMX is not 0 (read on every call)."""
    if os.environ.get("OLMO2_NATIVE_AMX", "1").strip() == "0" or not int8_gemm_available():
        return False
    if "amx" not in _state:
        _state["amx"] = bool(_lib().olmo2_amx_available())
    return bool(_state["amx"])


def _int4(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, group_size: int) -> torch.Tensor:
    entry = "int4"
    if x.shape[0] >= _gemm_rows[1] and int8_gemm_available():
        entry = "int4_prefill_amx" if x.shape[0] >= INT4_AMX_ROWS and amx_available() else "int4_prefill"
    return _mm(entry, x, w.shape[0], _ptr(w), _ptr(s), _ptr(z), group_size)


def _bf16(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return _mm("bf16", x, w.shape[0], _ptr(w))


def _f32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return _mm("f32", x, w.shape[0], _ptr(w))


# The same functions as custom ops, for torch.compile (opaque to Inductor, one graph).
@torch.library.custom_op("olmo2::native_int8_mm", mutates_args=())
def _op_int8(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return _int8(x, w, s)


@torch.library.custom_op("olmo2::native_int4_mm", mutates_args=())
def _op_int4(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, group_size: int) -> torch.Tensor:
    return _int4(x, w, s, z, group_size)


@torch.library.custom_op("olmo2::native_bf16_mm", mutates_args=())
def _op_bf16(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return _bf16(x, w)


@torch.library.custom_op("olmo2::native_f32_mm", mutates_args=())
def _op_f32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return _f32(x, w)


@_op_int8.register_fake
def _(x, w, s):
    return x.new_empty(x.shape[0], w.shape[0], dtype=torch.float32)


@_op_int4.register_fake
def _(x, w, s, z, group_size):
    return x.new_empty(x.shape[0], w.shape[0], dtype=torch.float32)


@_op_bf16.register_fake
def _(x, w):
    return x.new_empty(x.shape[0], w.shape[0], dtype=torch.float32)


@_op_f32.register_fake
def _(x, w):
    return x.new_empty(x.shape[0], w.shape[0], dtype=torch.float32)


def int8_mm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ (qweight int8 [N, K] * scales bf16 [N])^T in fp32, x quantized per block of
    32 columns to ~15 bits (|x - x̂| <= amax_b / 32766 per element; exact integer products).
    Blocks are contiguous below INT8_GEMM_ROWS rows or on AVX2 (gemv.c), strided from there on
    AVX-512 (gemm.c's header: the 32 columns one int32 lane meets over 8 chunks of 64)."""
    if torch.compiler.is_compiling():
        return torch.ops.olmo2.native_int8_mm(x, qweight, scales)
    return _int8(x, qweight, scales)


def int4_mm(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
            group_size: int) -> torch.Tensor:
    """x [M, K] @ dequantize_int4(packed, scales, zeros, group_size)^T in fp32 (x quantized per
    32 columns to int8, the same x̂ in every kernel: gemv.c below INT4_GEMM_ROWS rows or on
    AVX2, from there on AVX-512 gemm4.c's GEMM, or from INT4_AMX_ROWS gemm4_amx.c's where
    amx_available(); the GEMMs sum in other fp32 orders)."""
    if torch.compiler.is_compiling():
        return torch.ops.olmo2.native_int4_mm(x, packed, scales, zeros, group_size)
    return _int4(x, packed, scales, zeros, group_size)


def bf16_mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight bf16 [N, K]^T in fp32 (exact products, fp32 sums; float.c)."""
    if torch.compiler.is_compiling():
        return torch.ops.olmo2.native_bf16_mm(x, weight)
    return _bf16(x, weight)


def f32_mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight fp32 [N, K]^T in fp32 (fp32 FMA; float.c). The weight must be dense fp32
    (a Parameter's data as loaded); x is made fp32 and dense."""
    if torch.compiler.is_compiling():
        return torch.ops.olmo2.native_f32_mm(x, weight)
    return _f32(x, weight)
