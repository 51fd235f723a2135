"""GB/s of olmo2's native bf16 or int4 decode GEMV (the C entry points of native.bf16_mm and
native.int4_mm) against other builds of the same library, alternating in one process on
OLMo-2-0425-1B shapes.

    python benchmarks/native_gemv_ab.py --lib old=/tmp/old/gemv.so --threads 2 --rounds 40
    python benchmarks/native_gemv_ab.py --lib old=/tmp/old/gemv.so --threads 1 --isa avx2
    python benchmarks/native_gemv_ab.py --fmt int4 --lib old=/tmp/old/gemv.so --threads 1 --probe

Why: a kernel change is judged against the kernel it replaces, and on a shared host the load
drifts between processes more than two GEMVs differ, so both run in this process, call by
call: `this` is the library native.py builds from this checkout; each `--lib NAME=PATH` is
another build with the same `olmo2_bf16_mm` (or `olmo2_int4_mm`) entry point (e.g. main before the change:
`git worktree add /tmp/old REF && cd /tmp/old/olmo2/quant/native && gcc -O3 -shared -fPIC
-fopenmp -std=gnu11 -o /tmp/old/gemv.so *.c -lm`). ctypes calls the entry points directly,
so what is timed is the C loop, not the Python wrapper.

Weights: the 1B's 113 decode GEMVs (16 blocks of q, k, v, o 2048x2048, gate, up 8192x2048,
down 2048x8192, and the 100352x2048 LM head) in bf16, 2.56 GB, cut into five chunks (four
blocks each, 0.54 GB, and the LM head, 0.41 GB). Each round, every library streams one
chunk, in shuffled order, the chunk rotating from one call to the next, so no library
re-reads what the one before it just read (this host's L3 is 480 MB). Printed per library:
GB/s (median, quartiles, 90th percentile: on a loaded host the upper figures are the rounds
it was left alone), at 1 thread also GB per second of the calling thread's CPU time (leaves
out the time the OS gave the core to other jobs), and its speed over the first library's
(the first `--lib`, else `this`) in the same round. `--probe` adds the read-bandwidth probe of benchmarks/quant_kernels.py
once per round, and the ratios again over the quarter of rounds with the highest probe.

`--fmt int4`: the same 113 GEMVs with weights in olmo2/quant/formats.py's int4 (quantize_int4
of the same kind of random weights, group `--group`, default 128 as the 1B's), M = 1 row,
entry point olmo2_int4_mm. int4 is a quarter of bf16's bytes, so it keeps two copies of
the 16 blocks (eight chunks of four blocks, 0.14 GB each, and the LM head, 0.11 GB; 1.2 GB
in all): between two reads of one chunk the other libraries and rounds read ~1 GB of other
chunks, twice the L3. GB/s counts every byte the kernel reads for W: codes, scales and zeros.
`--resident` is the control for the compute side: one block's 7 GEMVs only (34 MB int4,
134 MB bf16), read again and again, so they come from the L3 (480 MB) and the L2, not from
memory; what the kernel computes per second when the memory is not what holds it back (on
this host the memory bandwidth one core gets swings 5-30 GB/s with the other jobs).

Outputs are compared with the first library's before timing (bitwise, or
the max relative difference).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import time

import torch

from quant_kernels import bandwidth_probe  # benchmarks/ is on sys.path when run as a script

H, F_, V = 2048, 8192, 100352
BLOCK = [(H, H)] * 4 + [(F_, H)] * 2 + [(H, F_)]   # (N, K) as stored
ISAS = {"avx2": 1, "avx512": 2}


def chunks(fmt: str, group: int, resident: bool = False) -> list[list[tuple[torch.Tensor, ...]]]:
    """Per chunk, its weights: (w bf16,) or (packed, scale, zero) of int4. `resident`: one
    chunk, one block's 7 GEMVs (docstring)."""
    g = torch.Generator().manual_seed(0)

    def mk(n, k):
        w = torch.randn(n, k, generator=g) * 0.02
        if fmt == "int4":
            from olmo2.quant.formats import quantize_int4
            return quantize_int4(w, group)
        return (w.to(torch.bfloat16),)
    if resident:
        return [[mk(n, k) for n, k in BLOCK]]
    copies = 8 if fmt == "int4" else 4  # int4: 8 chunks to stream past the L3 (docstring)
    return [[mk(n, k) for _ in range(4) for n, k in BLOCK] for _ in range(copies)] + [[mk(V, H)]]


def load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    i, p = ctypes.c_int, ctypes.c_void_p
    lib.olmo2_bf16_mm.argtypes = [i, i, p, i, i, p, i, p]
    lib.olmo2_int4_mm.argtypes = [i, i, p, i, i, p, p, p, i, i, p]
    lib.olmo2_bf16_mm.restype = lib.olmo2_int4_mm.restype = i
    return lib


def quartiles(v: list[float]) -> str:
    s = sorted(v)
    return f"{statistics.median(s):.1f} (IQR {s[len(s) // 4]:.1f}-{s[3 * len(s) // 4]:.1f}, p90 {s[int(0.9 * len(s))]:.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", action="append", default=[], help="NAME=PATH of another build (repeatable)")
    ap.add_argument("--fmt", choices=("bf16", "int4"), default="bf16")
    ap.add_argument("--group", type=int, default=128, help="int4 group size")
    ap.add_argument("--resident", action="store_true", help="one block's weights, re-read from cache (docstring)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", choices=sorted(ISAS), default="avx512")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--probe", action="store_true", help="measure the read bandwidth once per round")
    args = ap.parse_args()
    from olmo2.quant import native
    if not native.available():
        raise SystemExit(f"error: native library: {native.reason()}")
    libs = {}  # the --lib builds first: the first one is the base of the per-round ratios
    for spec in args.lib:
        name, _, path = spec.partition("=")
        if not path or not os.path.exists(path):
            ap.error(f"--lib {spec}: give NAME=PATH of a built library")
        libs[name] = load(path)
    libs["this"] = load(native._state["path"])
    torch.set_num_threads(args.threads)
    isa, th = ISAS[args.isa], args.threads
    # K from a stored weight's second dimension (int4 packs two columns per byte)
    xs_k = {H: H, F_: F_} if args.fmt == "bf16" else {H // 2: H, F_ // 2: F_}
    cs = chunks(args.fmt, args.group, args.resident)
    xs = {k: torch.randn(1, k, generator=torch.Generator().manual_seed(1)) for k in (H, F_)}
    ys = {n: torch.empty(1, n) for n in (H, F_, V)}
    nbytes = [sum(t.numel() * t.element_size() for w in c for t in w) for c in cs]

    def run(lib, c: int, keep: bool = False) -> list[torch.Tensor]:
        out = []  # outputs kept only for the check before timing (a copy is not the kernel's time)
        for w in cs[c]:
            n, k = w[0].shape[0], xs_k[w[0].shape[1]]
            if args.fmt == "int4":
                p, s, z = w
                rc = lib.olmo2_int4_mm(isa, th, xs[k].data_ptr(), 1, k, p.data_ptr(), s.data_ptr(), z.data_ptr(),
                                       args.group, n, ys[n].data_ptr())
            else:
                rc = lib.olmo2_bf16_mm(isa, th, xs[k].data_ptr(), 1, k, w[0].data_ptr(), n, ys[n].data_ptr())
            if rc != 0:
                raise SystemExit(f"error: olmo2_{args.fmt}_mm returned {rc} for {n}x{k}")
            if keep:
                out.append(ys[n].clone())
        return out

    names = list(libs)
    ref = [run(libs[names[0]], c, keep=True) for c in range(len(cs))]
    for name in names[1:]:
        got = [run(libs[name], c, keep=True) for c in range(len(cs))]
        pairs = [(a, b) for ca, cb in zip(got, ref) for a, b in zip(ca, cb)]
        rel = max(float(((a - b).abs() / b.abs().clamp_min(1e-3)).max()) for a, b in pairs)
        print(f"# {name} vs {names[0]}: bitwise equal {all(torch.equal(a, b) for a, b in pairs)}, max rel diff {rel:.1e}")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"# {cpu}; {args.fmt}{' resident' if args.resident else ''}, {args.isa}, {th} thread(s), {args.rounds} rounds, chunks {[round(b / 1e9, 2) for b in nbytes]} GB; "
          f"load average {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC", flush=True)
    wall: dict[str, list[float]] = {k: [] for k in names}
    busy: dict[str, list[float]] = {k: [] for k in names}
    probes = []
    c = 0
    for _ in range(args.rounds):
        if args.probe:
            probes.append(bandwidth_probe(1))
        order = names[:]
        random.shuffle(order)
        for k in order:
            t, tc = time.perf_counter(), time.thread_time()
            run(libs[k], c)
            wall[k].append(nbytes[c] / (time.perf_counter() - t) / 1e9)
            busy[k].append(nbytes[c] / (time.thread_time() - tc) / 1e9)
            c = (c + 1) % len(cs)
    if probes:
        print(f"# probe GB/s {quartiles(probes)}")
    for k in names:
        r = sorted(a / b for a, b in zip(wall[k], wall[names[0]]))
        q = len(r) // 4
        print(f"{k:>8}: GB/s {quartiles(wall[k])}" + (f"; per CPU-s {statistics.median(busy[k]):.1f}" if th == 1 else "")
              + f"; / {names[0]} per round median {statistics.median(r):.2f}x (IQR {r[q]:.2f}-{r[-q - 1]:.2f}x)")
    if len(probes) >= 8:  # the fast host phases: a kernel's compute shows only when memory keeps up
        cut = sorted(probes)[3 * len(probes) // 4]
        fast = [i for i, v in enumerate(probes) if v >= cut]
        for k in names[1:]:
            r = sorted(wall[k][i] / wall[names[0]][i] for i in fast)
            print(f"{k:>8}: in the {len(fast)} rounds with probe >= {cut:.1f} GB/s: GB/s "
                  f"{statistics.median(wall[k][i] for i in fast):.1f} vs {statistics.median(wall[names[0]][i] for i in fast):.1f}"
                  f"; / {names[0]} per round median {statistics.median(r):.2f}x (IQR {r[len(r) // 4]:.2f}-{r[-len(r) // 4 - 1]:.2f}x)")
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
