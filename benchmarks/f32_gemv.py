"""GB/s of fp32 decode GEMVs on OLMo-2-0425-1B shapes: PyTorch's F.linear (MKL sgemv) vs
olmo2's native fp32 kernel (olmo2/quant/native/float.c) on its AVX2 and AVX-512 paths.

    python benchmarks/f32_gemv.py                          # 1 thread, 2 layers + LM head, 5 rounds
    python benchmarks/f32_gemv.py --threads 1,2 --rounds 7

One activation row through `--layers` blocks' worth of distinct fp32 weights (q, k, v, o
2048x2048; gate, up 8192x2048; down 2048x8192, as N x K) plus the 100352x2048 LM head,
so the weights (1.3 GB at 2 layers) never fit in cache and each call streams its matrix from
memory as a decode step does. GB/s = weight bytes / median seconds, per shape (summed over
the copies of that shape) and for the whole pass. Variants alternate within each round, and
thread counts alternate too, so every figure in a row sees the same machine load; compare
within one run only, and read the load average printed at the start and the end.

Why: on the AMD Zen 3 machine kind MKL's fp32 GEMV streamed ~13.6 GB/s against llama.cpp's
22-25 (docs/cpu-baseline.md), so CPUs without AVX-512 run float.c's fp32 GEMV instead. Here (Intel,
AVX-512) the question this answers is whether the AVX2 loop, forced, keeps up with MKL; the
AMD speed itself cannot be measured on this host.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {"qkvo 2048x2048": (2048, 2048, 4), "gate/up 8192x2048": (8192, 2048, 2),
          "down 2048x8192": (2048, 8192, 1), "lm_head 100352x2048": (100352, 2048, 0)}


def weights(layers: int) -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, (n, k, per_layer) in SHAPES.items():
        count = per_layer * layers if per_layer else 1
        out[name] = [torch.randn(n, k, generator=g) * 0.02 for _ in range(count)]
    return out


def set_variant(v: str) -> None:
    from olmo2.quant import native
    want = {"native-avx2": "avx2", "native-avx512": "avx512"}.get(v, "")
    if os.environ.get("OLMO2_NATIVE_ISA", "") != want:
        os.environ["OLMO2_NATIVE_ISA"] = want
        native.reset()


def one_pass(ws: dict[str, list[torch.Tensor]], xs: dict[int, torch.Tensor], v: str) -> dict[str, float]:
    """Seconds spent on each shape in one pass over all weights (one call per matrix)."""
    from olmo2.quant import native
    mm = F.linear if v == "mkl" else native.f32_mm
    t_shape = {}
    for name, mats in ws.items():
        x = xs[mats[0].shape[1]]
        t = time.perf_counter()
        for w in mats:
            mm(x, w)
        t_shape[name] = time.perf_counter() - t
    return t_shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1", help="comma list, alternated within each round")
    ap.add_argument("--variants", default="mkl,native-avx2,native-avx512")
    args = ap.parse_args()
    from olmo2.quant import native
    threads = [int(t) for t in args.threads.split(",")]
    variants = args.variants.split(",")
    ws = weights(args.layers)
    xs = {k: torch.randn(1, k) for k in (2048, 8192)}
    nbytes = {name: sum(w.numel() * 4 for w in mats) for name, mats in ws.items()}
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"# {cpu}; torch {torch.__version__}; native {native.isa() or native.reason()}; {args.layers} layers + "
          f"LM head = {sum(nbytes.values()) / 1e9:.2f} GB fp32; load average {os.getloadavg()[0]:.2f}", flush=True)
    with torch.inference_mode():
        for v in variants:  # warm-up: builds the library, faults the pages in
            set_variant(v)
            one_pass(ws, xs, v)
        times = {(t, v): [] for t in threads for v in variants}
        for r in range(args.rounds):
            for t in threads:
                torch.set_num_threads(t)
                for v in variants:
                    set_variant(v)
                    times[(t, v)].append(one_pass(ws, xs, v))
            print(f"round {r + 1} done", flush=True)
    # correctness of what was timed: every variant's LM-head output within fp32 noise of MKL's
    w = ws["lm_head 100352x2048"][0]
    ref = F.linear(xs[2048], w)
    for v in variants[1:]:
        set_variant(v)
        err = (native.f32_mm(xs[2048], w) - ref).abs().max().item()
        print(f"# {v}: max |y - mkl| on the LM head {err:.2e} (|y| max {ref.abs().max().item():.2f})")
    print("| threads | shape | " + " | ".join(f"{v} GB/s" for v in variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    for t in threads:
        for name in [*ws, "whole pass"]:
            cells = []
            for v in variants:
                passes = times[(t, v)]
                secs = [sum(p.values()) if name == "whole pass" else p[name] for p in passes]
                b = sum(nbytes.values()) if name == "whole pass" else nbytes[name]
                gbs = [b / s / 1e9 for s in secs]
                cells.append(f"{statistics.median(gbs):.1f} ({min(gbs):.1f}-{max(gbs):.1f})")
            print(f"| {t} | {name} | " + " | ".join(cells) + " |")
    # the steadier figure on a shared host: each variant's whole-pass speed over MKL's in the
    # same round (they ran back to back, so they saw about the same load)
    for t in threads:
        mkl = [sum(p.values()) for p in times[(t, variants[0])]]
        for v in variants[1:]:
            ratios = sorted(m / sum(p.values()) for m, p in zip(mkl, times[(t, v)]))
            print(f"# {t} thread(s): {v} / {variants[0]} speed per round: median {statistics.median(ratios):.2f}x, "
                  f"range {ratios[0]:.2f}-{ratios[-1]:.2f}x over {len(ratios)} rounds")
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
