"""Training throughput on CPU: our loop's step vs a plain transformers step, same run.

    python benchmarks/cpu_train.py [--rounds 12] [--threads 2] [--batch 16] [--seq 128] [--sides ours,hf]
    python benchmarks/cpu_train.py --processes [--steps 8]     # each side in its own process: peak RSS

Sides, on the tiny replication's model (`olmo2.recipes.tiny.tiny_model`), the same batch,
threads and random tokens:
- ours: the tiny recipe's own loop settings (`tiny_stage1().train`: `train.compile` and
  `train.precision` as `make demo` runs them, resolved for this CPU by
  `olmo2.train.parallel`): `parallelize` → forward under the loop's autocast →
  `olmo2.train.loop.micro_batch_loss` (CE + z-loss, chunked) → backward → global-norm clip
  → AdamW over OLMo 2's param groups (`olmo2.train.optim`), as the loop does.
- fp32: the same with compile off and precision fp32 (the eager fp32 step).
- compiled: the same with `train.compile=True` (fp32): whether compiling each block pays.
- fast: the same with `train.precision="fast"` (bf16 autocast where the CPU has native
  bf16, e.g. AVX-512 BF16/AMX; fp32 elsewhere).
- hf:   `transformers.Olmo2ForCausalLM(input_ids, labels=...)` → backward → clip →
  `torch.optim.AdamW`, eager fp32.

Why interleaved in one process (the default): on this kind of shared host the *same*
process setup ran transformers at 3,435–6,333 tok/s from one process to the next
(benchmarks/RESULTS.md), so sides timed in separate processes one after the other compare
the host's drift, not the code. Here every side is built in one process and their steps
alternate (the order rotates each round), so each round is a paired comparison under the
same conditions; the ratio printed is the geometric mean over rounds of the per-round
ratio of CPU-seconds per step, with a 95% bootstrap interval over rounds. The first 3
steps of each side are warmup (the compile, if any, is there) and printed apart.
`--processes` runs each side alone in a subprocess instead, for its own peak RSS.
Not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import resource
import statistics
import subprocess
import sys
import time

SIDES = ("ours", "fp32", "compiled", "fast", "hf")
WARMUP = 3


def _build(kind: str, threads: int, batch: int, seq: int):
    """(step function, info) for one side; every side gets the same tokens."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from olmo2.recipes.tiny import tiny_model, tiny_stage1
    cfg = tiny_model()
    x = torch.randint(0, cfg.vocab_size - 2, (batch, seq), generator=torch.Generator().manual_seed(0))
    if kind == "hf":
        from transformers import Olmo2Config, Olmo2ForCausalLM
        hf_cfg = Olmo2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                if k not in ("architectures", "model_type", "rope_parameters")})
        model = Olmo2ForCausalLM(hf_cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        model.train()

        def step():
            model(input_ids=x, labels=x).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step, {"precision": "float32"}
    from olmo2.model import Olmo2
    from olmo2.train import parallel
    from olmo2.train.loop import micro_batch_loss
    from olmo2.train.optim import build_optimizer
    tc = tiny_stage1().train
    if kind == "fp32":
        tc = tc.replace(compile=False, precision="fp32")
    elif kind == "compiled":
        tc = tc.replace(compile=True, precision="fp32")
    elif kind == "fast":
        tc = tc.replace(compile=False, precision="fast")
    cpu = torch.device("cpu")
    model = Olmo2(cfg)
    model.reset_parameters()
    model = parallel.parallelize(model, tc, None, cpu)
    opt = build_optimizer(model, tc)
    dtype = parallel.resolve_precision(tc, cpu)
    autocast = torch.autocast("cpu", dtype=dtype) if parallel.use_autocast(tc, cpu) else contextlib.nullcontext()
    model.train()

    def step():
        ce, z = micro_batch_loss(model, x, x, tc, autocast)
        ((ce + 1e-4 * z) / x[:, 1:].numel()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, {"compile": tc.compile, "precision": str(dtype).removeprefix("torch.")}


def _timed(step) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - t0, time.process_time() - c0


def _geo_ratio(num: list[float], den: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Geometric mean over rounds of den[i]/num[i] (a speed ratio from times), with a 95%
    percentile bootstrap interval over rounds."""
    logs = [math.log(d / n) for n, d in zip(num, den)]
    rng = random.Random(seed)
    boots = sorted(statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(2000))
    return math.exp(statistics.fmean(logs)), math.exp(boots[49]), math.exp(boots[1949])


def interleaved(sides: list[str], rounds: int, threads: int, batch: int, seq: int) -> None:
    built = {k: _build(k, threads, batch, seq) for k in sides}
    warm = {}
    for k, (step, _) in built.items():
        ws = [_timed(step) for _ in range(WARMUP)]
        warm[k] = (sum(w for w, _ in ws), sum(c for _, c in ws))
    wall = {k: [] for k in sides}
    cpu = {k: [] for k in sides}
    for r in range(rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]  # rotate: no side always goes first
        for k in order:
            w, c = _timed(built[k][0])
            wall[k].append(w)
            cpu[k].append(c)
    tokens = batch * seq
    for k in sides:
        info = built[k][1]
        how = f"{'compiled, ' if info.get('compile') else ''}{info['precision']}"
        print(f"{k:>8}: {tokens / statistics.median(wall[k]):8.0f} tokens/s  "
              f"{tokens / statistics.median(cpu[k]):8.0f} tokens/CPU-s  warmup {warm[k][0]:5.1f} s "
              f"({warm[k][1]:5.1f} CPU-s)  ({how})", flush=True)
    if "hf" in sides:
        for k in (s for s in sides if s != "hf"):
            g, lo, hi = _geo_ratio(cpu[k], cpu["hf"])
            gw, lw, hw = _geo_ratio(wall[k], wall["hf"])
            print(f"ratio {k}/hf: {g:.2f}x [{lo:.2f}, {hi:.2f}] per CPU-s, {gw:.2f}x [{lw:.2f}, {hw:.2f}] wall "
                  f"(goal >= 1.3x; {rounds} interleaved rounds, 95% bootstrap); batch {batch}x{seq}, "
                  f"{threads} threads", flush=True)


def _worker(kind: str, steps: int, threads: int, batch: int, seq: int) -> dict:
    step, info = _build(kind, threads, batch, seq)
    ws = [_timed(step) for _ in range(WARMUP)]
    ts = [_timed(step) for _ in range(steps)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    return {"tok_s": batch * seq / statistics.median(w for w, _ in ts),
            "tok_cpu_s": batch * seq / statistics.median(c for _, c in ts),
            "warmup_s": sum(w for w, _ in ws), "warmup_cpu_s": sum(c for _, c in ws), "rss_mib": rss, **info}


def processes(sides: list[str], steps: int, threads: int, batch: int, seq: int) -> None:
    for kind in sides:
        out = subprocess.run([sys.executable, __file__, "--worker", kind, "--steps", str(steps),
                              "--threads", str(threads), "--batch", str(batch), "--seq", str(seq)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        how = f"{'compiled, ' if r.get('compile') else ''}{r['precision']}"
        print(f"{kind:>8}: {r['tok_s']:8.0f} tokens/s  {r['tok_cpu_s']:8.0f} tokens/CPU-s  warmup "
              f"{r['warmup_s']:5.1f} s  peak RSS {r['rss_mib']:6.0f} MiB ({how}, own process)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds (one step of each side per round)")
    p.add_argument("--steps", type=int, default=8, help="--processes: timed steps per side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--sides", default="ours,hf", help=f"comma-separated, of {', '.join(SIDES)}")
    p.add_argument("--processes", action="store_true", help="each side alone in its own process (peak RSS)")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(_worker(a.worker, a.steps, a.threads, a.batch, a.seq)))
        return
    sides = a.sides.split(",")
    for k in sides:
        if k not in SIDES:
            p.error(f"--sides: {k!r} is not one of {', '.join(SIDES)}")
    if a.processes:
        processes(sides, a.steps, a.threads, a.batch, a.seq)
    else:
        interleaved(sides, a.rounds, a.threads, a.batch, a.seq)


if __name__ == "__main__":
    main()
