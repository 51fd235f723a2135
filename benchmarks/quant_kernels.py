"""GB/s of each quantized matmul kernel on OLMo-2-0425-1B shapes, against a bandwidth probe.

    python benchmarks/quant_kernels.py                  # decode (batch 1) and prefill (128 rows)
    python benchmarks/quant_kernels.py --layers 2 --reps 5 --threads 2
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/quant_kernels.py   # what an AVX2-only CPU dispatches
    python benchmarks/quant_kernels.py --threads 1 --per-shape --only int8:native,int8:aten,bf16:aten

Decode: one row of activations through `--layers` blocks' worth of distinct weights
(q, k, v, o 2048x2048; gate, up 8192x2048; down 2048x8192) plus the 100352x2048 LM head,
so the weights never fit in cache and each kernel streams them as a real decode step does.
GB/s = weight bytes read (codes + scales) / median time; "% of probe" divides by the read
bandwidth measured in the same run (torch fp32 sum over 512 MB, the figure decode is
bounded by). "est. 1B tok/s" scales the per-weight time to the 1B's 1.279 B weights read
per token (16 blocks + LM head). Prefill: 128 rows through one block (7 matmuls), reported
as GFLOP/s of wall time, in parentheses per second of this process's CPU time (at 1 thread
the steadier figure on a shared host: it leaves out the time other jobs held the core), and
as the 1B prefill tok/s the wall figure implies.

Kernel `native` is olmo2's own C kernels (olmo2/quant/native.py); `native-avx2` the same
library forced onto its AVX2 code path (what an AVX2-only CPU such as AMD Zen 3 runs). Its
int8 prefill column is gemm.c's GEMM (from native.INT8_GEMM_ROWS rows) and its int4 one
gemm4_amx.c's on a CPU with AMX-INT8, else gemm4.c's (from native.INT4_GEMM_ROWS;
`native-vnni` forces gemm4.c: OLMO2_NATIVE_AMX=0); the rows `native-rows` run the decode
kernel (gemv.c) on the same 128 rows, as prefill ran before those GEMMs existed
(native.per_row()).
`--per-shape` adds a table per 1B matrix shape (time per call and GB/s at one row, each
shape repeated over enough distinct copies to stream from memory, not cache).

Every row runs in this process one after another (same load), so compare rows with each
other, not with other runs; the machine's load is printed. The kernels are the ones
olmo2/quant/linear.py calls, on canonical weights made by olmo2/quant/formats.py.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from olmo2.quant.linear import BF16Linear, Int4Linear, Int8Linear

H, F_, V = 2048, 8192, 100352
BLOCK = [(H, H), (H, H), (H, H), (H, H), (F_, H), (F_, H), (H, F_)]   # (out, in)
WEIGHTS_PER_TOKEN = 16 * sum(o * i for o, i in BLOCK) + V * H          # 1.279 B


def bandwidth_probe(reps: int) -> float:
    a = torch.ones(128 * 1024 * 1024)  # 512 MB fp32
    a.sum()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a.sum()
        ts.append(time.perf_counter() - t)
    return a.numel() * 4 / statistics.median(ts) / 1e9


def _bytes(m) -> int:
    return sum(b.numel() * b.element_size() for b in m.buffers())


def make(fmt: str, shapes, gs: int):
    """Quantized modules for `shapes` (random weights: these kernels have no data-dependent paths)."""
    mods = []
    for o, i in shapes:
        w = torch.randn(o, i) * 0.02
        m = {"int8": lambda: Int8Linear.from_float(w), "bf16": lambda: BF16Linear.from_float(w),
             "int4": lambda: Int4Linear.from_float(w, gs), "fp32": lambda: torch.nn.Linear(i, o, bias=False)}[fmt]()
        if fmt == "fp32":
            m.weight.data = w
        mods.append(m)
        del w
    return mods


def set_kernel(kernel: str) -> None:
    """OLMO2_QUANT_KERNEL for `kernel`; native-avx2 = native on its AVX2 path; native-vnni =
    native with AMX off (int4 prefill on gemm4.c instead of gemm4_amx.c)."""
    from olmo2.quant import native
    os.environ["OLMO2_QUANT_KERNEL"] = kernel.split("-")[0]
    os.environ["OLMO2_NATIVE_AMX"] = "0" if kernel == "native-vnni" else "1"
    want = "avx2" if kernel == "native-avx2" else ""
    if os.environ.get("OLMO2_NATIVE_ISA", "") != want:
        os.environ["OLMO2_NATIVE_ISA"] = want
        native.reset()


def time_pass(mods, rows: int, kernel: str, reps: int, cpu: list | None = None) -> float:
    """Median wall seconds of one pass; `cpu` (if given) gets the median CPU seconds of this
    process per pass, which at 1 thread leaves out the time other jobs held the core."""
    from olmo2.quant import native
    set_kernel(kernel.replace("-rows", ""))
    xs = {m.in_features: torch.randn(rows, m.in_features) for m in mods}
    with torch.inference_mode(), native.per_row() if kernel.endswith("-rows") else contextlib.nullcontext():
        for m in mods:
            m(xs[m.in_features])   # warm-up; packs the kernel's layout
        ts, cs = [], []
        for _ in range(reps):
            t, c = time.perf_counter(), time.process_time()
            for m in mods:
                m(xs[m.in_features])
            ts.append(time.perf_counter() - t)
            cs.append(time.process_time() - c)
    if cpu is not None:
        cpu.append(statistics.median(cs))
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=1, help="blocks of distinct weights per decode pass (plus the LM head)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill-rows", type=int, default=128)
    ap.add_argument("--only", default="", help="comma list of FORMAT:KERNEL rows to run (default all)")
    ap.add_argument("--per-shape", action="store_true", help="also time each 1B matrix shape on its own (1 row)")
    ap.add_argument("--no-prefill", action="store_true", help="skip the prefill columns")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from olmo2.quant.kernels import cpu_flags, cpu_kind, fbgemm_available
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    kind = cpu_kind()
    print(f"# {model}; torch {torch.__version__}, capability {kind.capability}, bf16={kind.bf16} vnni={kind.vnni} "
          f"amx={'amx_tile' in cpu_flags()}, fbgemm={fbgemm_available()}; threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.1f}")
    bw = bandwidth_probe(args.reps)
    print(f"# read bandwidth probe (fp32 sum, 512 MB): {bw:.1f} GB/s\n")
    from olmo2.quant import native
    print(f"# native kernels: {native.isa() or 'not available: ' + native.reason()}")
    rows = [("fp32", "reference", 0), ("bf16", "aten", 0), ("bf16", "mkldnn", 0), ("bf16", "reference", 0),
            ("bf16", "native", 0), ("bf16", "native-avx2", 0),
            ("int8", "aten", 0), ("int8", "fbgemm", 0), ("int8", "reference", 0),
            ("int8", "native", 0), ("int8", "native-avx2", 0), ("int8", "native-rows", 0),
            ("int4", "aten", 32), ("int4", "aten", 64), ("int4", "aten", 128), ("int4", "reference", 128),
            ("int4", "native", 128), ("int4", "native-vnni", 128), ("int4", "native-rows", 128),
            ("int4", "native-avx2", 128), ("int4", "native", 32), ("int4", "native-vnni", 32),
            ("int4", "native-rows", 32)]
    if args.only:
        keep = set(args.only.split(","))
        rows = [r for r in rows if f"{r[0]}:{r[1]}" in keep or f"{r[0]}:{r[1]}:{r[2]}" in keep]
    print("| weights | kernel | decode ms/pass | GB/s | % of probe | est. 1B decode tok/s | "
          f"prefill {args.prefill_rows} rows GFLOP/s (per CPU-s) | est. 1B prefill tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for fmt, kernel, gs in rows:
        # the reference path dequantizes per call: time it on one block only, it is slow
        shapes = BLOCK * (1 if kernel == "reference" and fmt != "fp32" else args.layers) + \
            ([] if kernel == "reference" and fmt != "fp32" else [(V, H)])
        mods = make(fmt, shapes, gs)
        nbytes = sum(_bytes(m) if fmt != "fp32" else m.weight.numel() * 4 for m in mods)
        nweights = sum(o * i for o, i in shapes)
        t = time_pass(mods, 1, kernel, args.reps)
        gbs = nbytes / t / 1e9
        tok_s = 1 / (t * WEIGHTS_PER_TOKEN / nweights)
        name = f"{fmt}" + (f" g{gs}" if fmt == "int4" else "")
        if args.no_prefill:
            pre = "– | –"
        else:
            cpu = []
            tp = time_pass(mods[:len(BLOCK)], args.prefill_rows, kernel, max(3, args.reps // 2), cpu)
            flops = 2 * args.prefill_rows * sum(o * i for o, i in BLOCK)
            pre_tok_s = args.prefill_rows / (tp * WEIGHTS_PER_TOKEN / sum(o * i for o, i in BLOCK))
            pre = f"{flops / tp / 1e9:.0f} ({flops / cpu[0] / 1e9:.0f}) | {pre_tok_s:.0f}"
        print(f"| {name} | {kernel} | {1e3 * t:.1f} | {gbs:.1f} | {100 * gbs / bw:.0f}% | {tok_s:.1f} | {pre} |",
              flush=True)
        del mods
    if args.per_shape:
        per_shape(rows, args.reps, bw)


SHAPES = [(H, H), (F_, H), (H, F_), (V, H)]   # (out, in): q/k/v/o, gate/up, down, LM head


def per_shape(rows, reps: int, bw: float) -> None:
    """Time per call and GB/s per 1B shape at one row; ≥ 256 MB of distinct weights each."""
    print("\n| weights | kernel | " + " | ".join(f"{i}→{o} µs/call (GB/s)" for o, i in SHAPES) + " |")
    print("|---|---|" + "---|" * len(SHAPES))
    for fmt, kernel, gs in rows:
        if kernel == "reference":
            continue
        cells = []
        for o, i in SHAPES:
            copies = max(1, (256 << 20) // (o * i))
            mods = make(fmt, [(o, i)] * copies, gs)
            nbytes = sum(_bytes(m) if fmt != "fp32" else m.weight.numel() * 4 for m in mods) / copies
            t = time_pass(mods, 1, kernel, reps) / copies
            cells.append(f"{1e6 * t:.0f} ({nbytes / t / 1e9:.1f})")
            del mods
        name = f"{fmt}" + (f" g{gs}" if fmt == "int4" else "")
        print(f"| {name} | {kernel} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n(read bandwidth probe of this run: {bw:.1f} GB/s)")


if __name__ == "__main__":
    main()
