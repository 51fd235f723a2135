"""olmo2 vs llama.cpp decode and prompt speed, the two interleaved in one process (issue 9).

    python benchmarks/decode_interleaved.py --model DIR                  # fp32,bf16,int8,int4
    python benchmarks/decode_interleaved.py --model DIR --precisions fp32,int8 --rounds 12
    python benchmarks/decode_interleaved.py --quick                      # tiny-demo preset: a smoke run

Why: cpu_decode.py runs each system in its own process, and on this KVM host the memory
bandwidth drifts 15-22 GB/s from one minute to the next, so its per-round fp32 ratio to
llama.cpp spread 0.73-1.08x (benchmarks/RESULTS.md): it could not say whether fp32/bf16 are
ahead or behind. Both systems stream the same weight bytes per token, so the question is
their ratio under the same bandwidth at the same moment. Here both live in one process and
take turns in short blocks, so a slow minute hits both.

Per precision (its own pair of models; the previous pair is freed first: the fp32 1B is
~5 GB a side):
- olmo2: `load_model(MODEL, float32, quant=P)` as `olmo2 generate --quant P` loads it
  (fp32 is `--quant none`), driven through `Decoder.start/step` as generate drives it
  (eager; `--compile` compiles the step), greedy argmax.
- llama.cpp: llama-cpp-python on the GGUF `olmo2 convert gguf --type T` writes
  (cpu_decode.GGUF_TYPES), with cpu_decode's worker settings: n_batch 512, n_threads =
  n_threads_batch = --threads, mmap, extra buffer types off (they crash Q8_0/Q4_0 on this
  AMX host: cpu_decode.llama_extra_bufts; `--llama-extra-bufts on` with a llama-cpp-python
  built without AMX, first on PYTHONPATH, turns its repacked layouts back on); token ids are fed directly (no BOS handling),
  greedy argmax over its last logits row.
- both: the same 128 random prompt ids, the same threads, no EOS stop (both argmax the raw
  logits; with random weights neither ever sees a reason to stop).
- prompt: each side prefills the prompt from an empty cache (olmo2's Decoder would
  otherwise reuse the cached prefix), alternating in ABBA order; prompt tok/s = 128 / time.
- decode: blocks of B greedy tokens, each side continuing its own sequence, in ABBA order
  (olmo2, llama, llama, olmo2, then again), so a linear drift within a round cancels; when
  a block would run past prompt + --max-new both sides re-prefill (untimed) and continue, at
  the same positions. B is chosen after warm-up so the faster side's block lasts about
  --block-seconds (>= ~1 s: a block is one number, the per-token jitter averages out).
- summary: per side the median block tok/s; the ratio olmo2/llama.cpp as the geometric mean
  over adjacent block pairs (ABBA makes every block one pair's member, half of the pairs in
  each order) with a 95% percentile bootstrap interval over the pairs; the spread of the
  pair ratios; the same ratio per CPU-second of this process (time the OS gave our cores to
  other jobs left out, as cpu_train.py reports it); every block's tok/s in run order;
  greedy-token agreement of the two sides' first block (fp32 vs F32 should agree on the
  first tokens; quantized schemes may part: Q8_0 scales per 32-block, olmo2 int8 per channel).

Thread pools: two OpenMP runtimes in one process would each spin on the 2 cores after their
turn. They are not two here: llama-cpp-python's libggml*.so link `libgomp.so.1` by soname
(RUNPATH $ORIGIN, no copy of their own), torch loads its bundled libgomp.so.1 first (this
script imports torch before llama_cpp), so the dynamic loader binds ggml to torch's copy:
one runtime, one team of worker threads serving torch's, olmo2's native kernels' and
ggml's parallel regions (`threadpool_check` prints what /proc/self/maps shows). A
switch still costs something if the team's threads were parked, so the run measures it:
each side's blocks that follow the other side's vs those that follow its own (ABBA gives
half of each), printed as "switch". `--wait-policy passive` re-executes with
OMP_WAIT_POLICY=PASSIVE (the runtime reads it once, at start): parked threads sleep at once
instead of spinning. Under *outside* load it matters a great deal (RESULTS.md, 22:00 UTC,
int8, load 3-4 on 2 cores: both sides 2.5-5x faster, intervals 3x narrower), because a
spinning thread burns the core its descheduled partner needs; its cost on an idle host is
what `--wait-policy passive` vs the default measures there. The default stays unset: what
llama.cpp users run, and both sides share the one runtime. (`olmo2 generate` itself now runs
with GOMP_SPINCOUNT=10000, olmo2/infer/omp.py: ~4% slower on an idle host, so this script's
idle figures are olmo2's slightly favoured; cpu_decode.py gives each side its own setting.)
Not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cpu_decode (it puts the repo on sys.path)
from cpu_decode import (GGUF_TYPES, cpu_description, ensure_checkpoint, ensure_gguf, llama_extra_bufts,  # noqa: E402
                        llama_status, olmo2_cli)

PRECISIONS = tuple(GGUF_TYPES)      # fp32, bf16, int8, int4
QUANT = {"fp32": "none", "bf16": "bf16", "int8": "int8", "int4": "int4"}  # olmo2 generate --quant
SIDES = ("olmo2", "llama.cpp")


# ---- pure parts (tested in tests/test_bench_interleaved.py) ----------------------------
def abba(rounds: int, sides: tuple[str, str] = SIDES) -> list[str]:
    """The run order: A B B A per round. Pairs (0,1), (2,3), ... alternate which side goes
    first, and each side's blocks alternate between following the other side and itself."""
    a, b = sides
    return [a, b, b, a] * rounds


def pair_ratios(order: list[str], rates: list[float], sides: tuple[str, str] = SIDES) -> list[float]:
    """rate(sides[0]) / rate(sides[1]) for each adjacent pair of an `abba` schedule."""
    out = []
    for i in range(0, len(order) - 1, 2):
        x = dict(zip(order[i:i + 2], rates[i:i + 2]))
        if len(x) != 2:
            raise ValueError(f"schedule positions {i}, {i + 1} are not one block of each side")
        out.append(x[sides[0]] / x[sides[1]])
    return out


def geo_interval(ratios: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Geometric mean of the ratios and its 95% percentile bootstrap interval over the pairs
    (olmo2.eval.intervals.ratio_ci on the logs: a pair's log ratio is the unit, so 1.25x and
    0.8x weigh the same)."""
    from olmo2.eval.intervals import ratio_ci
    est, lo, hi = ratio_ci([math.log(r) for r in ratios], [1.0] * len(ratios), seed=seed)
    return math.exp(est), math.exp(lo), math.exp(hi)


def switch_effect(order: list[str], rates: list[float], side: str) -> float | None:
    """median tok/s of `side`'s blocks right after the other side's / after its own (the
    cost of taking over the threads from the other library; 1.0 = none). None when either
    kind is missing (the first block follows nothing)."""
    after_other = [r for i, (s, r) in enumerate(zip(order, rates)) if s == side and i and order[i - 1] != side]
    after_self = [r for i, (s, r) in enumerate(zip(order, rates)) if s == side and i and order[i - 1] == side]
    if not after_other or not after_self:
        return None
    return statistics.median(after_other) / statistics.median(after_self)


def block_size(rate_fast: float, seconds: float, cap: int) -> int:
    """Tokens per block so the faster side's block lasts about `seconds` (at least 2)."""
    return max(2, min(cap, math.ceil(rate_fast * seconds)))


# ---- the two sides ---------------------------------------------------------------------
class Olmo2Side:
    """olmo2 as `olmo2 generate --quant P` runs it: load_model + Decoder, greedy."""

    def __init__(self, model_dir: Path, precision: str, prompt: list[int], max_new: int, compile: bool):
        import torch

        from olmo2.checkpoint import load_model
        from olmo2.infer.decoder import Decoder
        self.torch = torch
        self.model = load_model(model_dir, dtype=torch.float32, quant=QUANT[precision])
        self.ids = torch.tensor([prompt])
        self.dec = Decoder(self.model, 1, len(prompt) + max_new, compile=compile)
        self.next = None

    def prefill(self) -> int:
        with self.torch.inference_mode():
            self.dec.reset()  # else start() would reuse the cached prompt and time nothing
            self.next = self.dec.start(self.ids).argmax(-1)
        return int(self.next[0])

    def decode(self, n: int) -> list[int]:
        out = []
        with self.torch.inference_mode():
            for _ in range(n):
                self.next = self.dec.step(self.next).argmax(-1)
                out.append(self.next)
        return [int(t[0]) for t in out]

    def close(self) -> None:
        del self.dec, self.model


class LlamaSide:
    """llama.cpp through llama-cpp-python, with cpu_decode.py's worker settings."""

    def __init__(self, gguf: Path, prompt: list[int], max_new: int, threads: int, extra_bufts: bool = False):
        import numpy as np
        from llama_cpp import Llama
        self.np = np
        llama_extra_bufts(extra_bufts)
        self.llm = Llama(model_path=str(gguf), n_ctx=max(512, len(prompt) + max_new + 8), n_batch=512,
                         n_threads=threads, n_threads_batch=threads, verbose=False)
        self.ids = prompt
        self.n_vocab = self.llm.n_vocab()
        self.next = 0

    def _argmax(self) -> int:
        # The last position's logits straight from llama.cpp: llama-cpp-python 0.3.36's eval()
        # no longer copies them into `llm.scores` unless logits_all=True (that row stays 0,
        # so an argmax over it is always token 0), and logits_all would compute every row.
        row = self.np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))
        return int(row.argmax())

    def prefill(self) -> int:
        self.llm.reset()
        self.llm.eval(self.ids)
        self.next = self._argmax()
        return self.next

    def decode(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            self.llm.eval([self.next])
            self.next = self._argmax()
            out.append(self.next)
        return out

    def close(self) -> None:
        self.llm.close()


def threadpool_check() -> str:
    """Which OpenMP runtimes this process has mapped (after both libraries loaded)."""
    maps = Path("/proc/self/maps").read_text().splitlines() if Path("/proc/self/maps").exists() else []
    libs = sorted({ln.split()[-1] for ln in maps if any(k in ln for k in ("libgomp", "libiomp", "libomp"))})
    return f"{len(libs)} OpenMP runtime(s) mapped: " + ", ".join(libs)


# ---- one precision ---------------------------------------------------------------------
@dataclass
class Result:
    precision: str
    block: int = 0
    order: list[str] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)     # tok/s per block, in `order`
    decode_cpu: list[float] = field(default_factory=list)  # tokens per CPU-second of this process
    prompt_order: list[str] = field(default_factory=list)
    prompt: list[float] = field(default_factory=list)     # prompt tok/s per prefill
    tokens: dict = field(default_factory=dict)            # side -> greedy ids of sequence 1
    load_s: dict = field(default_factory=dict)
    load_avg: tuple = ()


def run_precision(args, model_dir: Path, prec: str, prompt: list[int]) -> Result:
    res = Result(prec)
    la0 = os.getloadavg()[0]
    t = time.perf_counter()
    o = Olmo2Side(model_dir, prec, prompt, args.max_new, args.compile)
    res.load_s["olmo2"] = time.perf_counter() - t
    g = ensure_gguf(model_dir, GGUF_TYPES[prec])
    if not isinstance(g, Path):
        raise SystemExit(f"error: {model_dir}: llama.cpp {GGUF_TYPES[prec]}: {g}")
    t = time.perf_counter()
    ll = LlamaSide(g, prompt, args.max_new, args.threads, args.llama_extra_bufts == "on")
    res.load_s["llama.cpp"] = time.perf_counter() - t
    sides = {"olmo2": o, "llama.cpp": ll}
    try:
        # warm-up: a prefill and a few steps each (packs olmo2's kernels; compiles with --compile).
        # The block size comes from each side's *fastest* step: under load the warm-up may land
        # in a slow phase, and blocks sized from it were 0.3 s long once the host went quiet.
        rate = {}
        for name, s in sides.items():
            s.prefill()
            s.decode(2)
            steps = []
            for _ in range(4):
                t = time.perf_counter()
                s.decode(1)
                steps.append(time.perf_counter() - t)
            rate[name] = 1 / min(steps)
        res.block = args.block or block_size(max(rate.values()), args.block_seconds, args.max_new)
        # prompt processing, ABBA
        res.prompt_order = abba(args.prompt_rounds)
        for name in res.prompt_order:
            t = time.perf_counter()
            sides[name].prefill()
            res.prompt.append(len(prompt) / (time.perf_counter() - t))
        # decode blocks, ABBA; both sides restart together at the same positions
        first = {name: s.prefill() for name, s in sides.items()}
        pos = 0
        res.order = abba(args.rounds)
        for i, name in enumerate(res.order):
            if i % 2 == 0 and pos + res.block > args.max_new:
                # even positions of ABBA follow the same side; its prefill goes last, so the
                # block still follows its own work (the "switch" figure stays clean)
                for other in sorted(sides, key=lambda n: n == name):
                    sides[other].prefill()
                pos = 0
            t, c = time.perf_counter(), time.process_time()
            toks = sides[name].decode(res.block)
            res.decode.append(res.block / (time.perf_counter() - t))
            res.decode_cpu.append(res.block / (time.process_time() - c))
            if i < 2:  # the first pair: both sides' first sequence from the prompt
                res.tokens[name] = [first[name]] + toks
            if i % 2 == 1:
                pos += res.block
    finally:
        for s in sides.values():
            s.close()
        del o, ll, sides
        gc.collect()
        try:  # hand freed heap back to the OS before the next pair loads (RAM holds ~2 fp32 1Bs)
            import ctypes
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
    res.load_avg = (la0, os.getloadavg()[0])
    return res


def quick_checkpoint(cache: Path) -> Path:
    """The --quick model: a random tiny-demo with a small BPE beside it. `olmo2 convert gguf`
    needs the checkpoint's tokenizer.json, and cpu_decode's tiny-demo checkpoint has none
    (its vocabulary is below dolma2's); `olmo2 init --tokenizer` sizes the embedding to it."""
    out = cache / "tiny-demo-bpe-random"
    if not (out / "config.json").exists():
        from olmo2.data.bpe import train_bpe
        lines = [ln for ln in (__doc__ or "").splitlines() if ln.strip()]
        tok = train_bpe(lines * 4, vocab_size=400, out_path=cache / "quick-bpe.json", min_frequency=1)
        r = olmo2_cli("init", "--preset", "tiny-demo", "--out", str(out), "--seed", "0", "--tokenizer", str(tok))
        if r.returncode != 0:
            raise SystemExit(f"olmo2 init failed: {r.stderr.strip()}")
    return out


def report(res: Result) -> dict:
    """Print one precision's lines; the summary row's values."""
    def side_rates(order, rates, side):
        return [r for s, r in zip(order, rates) if s == side]
    d = pair_ratios(res.order, res.decode)
    p = pair_ratios(res.prompt_order, res.prompt)
    dg, dlo, dhi = geo_interval(d)
    pg, plo, phi = geo_interval(p)
    med = {s: statistics.median(side_rates(res.order, res.decode, s)) for s in SIDES}
    pmed = {s: statistics.median(side_rates(res.prompt_order, res.prompt, s)) for s in SIDES}
    a, b = res.tokens.get("olmo2", []), res.tokens.get("llama.cpp", [])
    agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    print(f"\n## {res.precision}: olmo2 --quant {QUANT[res.precision]} vs llama.cpp {GGUF_TYPES[res.precision].upper()} "
          f"(load average {res.load_avg[0]:.1f} at start, {res.load_avg[1]:.1f} at end; load s: olmo2 "
          f"{res.load_s['olmo2']:.1f}, llama.cpp {res.load_s['llama.cpp']:.1f})")
    print(f"prompt ({len(p)} pairs): olmo2 median {pmed['olmo2']:.1f} tok/s, llama.cpp {pmed['llama.cpp']:.1f}; "
          f"ratio {pg:.2f}× [{plo:.2f}, {phi:.2f}], pairs {min(p):.2f}–{max(p):.2f}×")
    print(f"decode ({len(d)} pairs of {res.block}-token blocks): olmo2 median {med['olmo2']:.2f} tok/s, llama.cpp "
          f"{med['llama.cpp']:.2f}; ratio {dg:.2f}× [{dlo:.2f}, {dhi:.2f}], pairs {min(d):.2f}–{max(d):.2f}×")
    dc, dclo, dchi = geo_interval(pair_ratios(res.order, res.decode_cpu))
    print(f"decode per CPU-second of this process (leaves out time the OS gave our cores to other jobs; "
          f"spin-waits count): ratio {dc:.2f}× [{dclo:.2f}, {dchi:.2f}]")
    print("decode blocks, tok/s in run order: " + " ".join(
        f"{'o' if s == 'olmo2' else 'l'}{r:.2f}" for s, r in zip(res.order, res.decode)))
    sw = {s: switch_effect(res.order, res.decode, s) for s in SIDES}
    print("switch (block tok/s after the other side / after itself): " +
          ", ".join(f"{s} {v:.3f}×" if v else f"{s} –" for s, v in sw.items()))
    print(f"greedy tokens of the first block: equal for the first {agree} of {min(len(a), len(b))}")
    return dict(prec=res.precision, d=(dg, dlo, dhi), p=(pg, plo, phi), med=med, pmed=pmed, block=res.block,
                pairs=len(d), agree=f"{agree}/{min(len(a), len(b))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint dir (default: a random --preset checkpoint)")
    ap.add_argument("--preset", default="olmo2-1b", help="preset of the random checkpoint (olmo2 init)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of fp32, bf16, int8, int4")
    ap.add_argument("--quick", action="store_true", help="tiny-demo preset, short blocks: a smoke run")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-new", type=int, default=128, help="a sequence restarts from the prompt past this")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8, help="ABBA decode rounds (2 blocks of each side per round)")
    ap.add_argument("--prompt-rounds", type=int, default=3, help="ABBA prompt rounds (2 prefills of each side)")
    ap.add_argument("--block", type=int, default=0, help="tokens per block (default: from --block-seconds)")
    ap.add_argument("--block-seconds", type=float, default=1.5, help="target block length for the faster side")
    ap.add_argument("--compile", action="store_true", help="olmo2: torch.compile the decode step")
    ap.add_argument("--llama-extra-bufts", choices=("on", "off"), default="off",
                    help="llama.cpp's extra CPU buffer types (AMX, repacked Q4_0/Q8_0 layouts); off: "
                         "a GGML_NATIVE build crashes Q8_0/Q4_0 with them on an AMX host")
    ap.add_argument("--wait-policy", choices=("default", "passive"), default="default",
                    help="passive: re-run with OMP_WAIT_POLICY=PASSIVE (parked OpenMP threads sleep, never spin)")
    args = ap.parse_args()
    if args.wait_policy == "passive" and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        # the OpenMP runtime reads it once when it starts: a fresh interpreter, before torch loads
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    precs = [p for p in args.precisions.split(",") if p]
    bad = [p for p in precs if p not in PRECISIONS]
    if bad or not precs:
        raise SystemExit(f"error: --precisions: {','.join(bad) or 'empty'}: use a comma list of {', '.join(PRECISIONS)}")
    if args.quick:
        args.preset, args.prompt_len, args.max_new = "tiny-demo", 16, 32
        args.rounds, args.prompt_rounds, args.block_seconds = 2, 1, 0.05
    import torch  # before llama_cpp: ggml then binds to torch's libgomp (see the docstring)
    torch.set_num_threads(args.threads)
    why = llama_status()
    if why:
        raise SystemExit(f"error: llama.cpp: {why}")
    import llama_cpp
    cache = Path(os.environ.get("OLMO2_CACHE", "/tmp/olmo2-bench")) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    if args.model:
        model_dir = Path(args.model)
    else:
        model_dir = quick_checkpoint(cache) if args.quick else ensure_checkpoint(args.preset, cache)
    from olmo2.config import ModelConfig
    vocab = ModelConfig.from_json_file(model_dir / "config.json").vocab_size
    rng = random.Random(0)
    prompt = [rng.randrange(min(vocab, 100000)) for _ in range(args.prompt_len)]
    print(f"# decode_interleaved {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"CPU: {cpu_description()}")
    print(f"{model_dir}, batch 1, prompt {args.prompt_len}, greedy, {args.threads} threads, {args.rounds} ABBA "
          f"decode rounds, {args.prompt_rounds} prompt rounds; torch {torch.__version__}, llama-cpp-python "
          f"{llama_cpp.__version__} at {Path(llama_cpp.__file__).parent} (extra buffer types {args.llama_extra_bufts}); OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
          f"{'; olmo2 step compiled' if args.compile else ''}", flush=True)
    rows = []
    for prec in precs:
        res = run_precision(args, model_dir, prec, prompt)
        if len(rows) == 0:
            print(f"thread pools: {threadpool_check()}")
        rows.append(report(res))
        sys.stdout.flush()
    print("\n## summary: olmo2 / llama.cpp at the same weight precision, one process, ABBA blocks")
    print("| precision | decode ratio [95% CI] | olmo2 / llama.cpp decode tok/s | prompt ratio [95% CI] | "
          "olmo2 / llama.cpp prompt tok/s | block | pairs | greedy equal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['prec']} | {r['d'][0]:.2f}× [{r['d'][1]:.2f}, {r['d'][2]:.2f}] | {r['med']['olmo2']:.2f} / "
              f"{r['med']['llama.cpp']:.2f} | {r['p'][0]:.2f}× [{r['p'][1]:.2f}, {r['p'][2]:.2f}] | "
              f"{r['pmed']['olmo2']:.0f} / {r['pmed']['llama.cpp']:.0f} | {r['block']} | {r['pairs']} | {r['agree']} |")


if __name__ == "__main__":
    main()
