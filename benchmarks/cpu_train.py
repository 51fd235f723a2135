"""Training throughput on CPU: our loop's step vs a plain transformers step, same run.

    python benchmarks/cpu_train.py [--steps 8] [--threads 2] [--batch 16] [--seq 128] [--sides ours,fp32,hf]

Each side runs in its own subprocess (so peak RSS is its own) on the tiny replication's
model (`olmo2.recipes.tiny.tiny_model`), the same batch, threads and random tokens:
- ours: the tiny recipe's own loop settings (`tiny_stage1().train`: `train.compile` and
  `train.precision` as `make demo` runs them, resolved for this CPU by
  `olmo2.train.parallel`): `parallelize` → forward under the loop's autocast →
  `olmo2.train.loop.micro_batch_loss` (CE + z-loss, chunked) → backward → global-norm clip
  → AdamW over OLMo 2's param groups (`olmo2.train.optim`), as the loop does.
- fp32: the same with compile off and precision fp32 (the eager fp32 step: what the loop
  ran before, and what the exactness tests run).
- hf:   `transformers.Olmo2ForCausalLM(input_ids, labels=...)` → backward → clip →
  `torch.optim.AdamW`, eager fp32.
Prints tokens/s of each (median step after 3 warmup steps; the warmup, which holds the
compile, is printed apart), tokens per CPU-second (steadier than wall time on a busy
machine), the ratios to hf (goal ≥ 1.3) and each side's peak RSS. Not a test: numbers
depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time

SIDES = ("ours", "fp32", "hf")


def _worker(kind: str, steps: int, threads: int, batch: int, seq: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from olmo2.recipes.tiny import tiny_model, tiny_stage1
    cfg = tiny_model()
    x = torch.randint(0, cfg.vocab_size - 2, (batch, seq))
    info = {}
    if kind in ("ours", "fp32"):
        from olmo2.model import Olmo2
        from olmo2.train import parallel
        from olmo2.train.loop import micro_batch_loss
        from olmo2.train.optim import build_optimizer
        tc = tiny_stage1().train
        if kind == "fp32":
            tc = tc.replace(compile=False, precision="fp32")
        cpu = torch.device("cpu")
        model = Olmo2(cfg)
        model.reset_parameters()
        model = parallel.parallelize(model, tc, None, cpu)
        opt = build_optimizer(model, tc)
        dtype = parallel.resolve_precision(tc, cpu)
        autocast = torch.autocast("cpu", dtype=dtype) if parallel.use_autocast(tc, cpu) else contextlib.nullcontext()
        info = {"compile": tc.compile, "precision": str(dtype).removeprefix("torch."),
                "cpu": parallel.cpu_bf16_reason() if tc.precision == "fast" else None}

        def step():
            ce, z = micro_batch_loss(model, x, x, tc, autocast)
            ((ce + 1e-4 * z) / x[:, 1:].numel()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        from transformers import Olmo2Config, Olmo2ForCausalLM
        hf_cfg = Olmo2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                if k not in ("architectures", "model_type", "rope_parameters")})
        model = Olmo2ForCausalLM(hf_cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

        def step():
            model(input_ids=x, labels=x).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    model.train()
    times, cpus = [], []
    t_warm, c_warm = time.perf_counter(), time.process_time()
    for i in range(steps + 3):
        if i == 3:
            t_warm, c_warm = time.perf_counter() - t_warm, time.process_time() - c_warm
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    return {"tok_s": batch * seq / statistics.median(times), "tok_cpu_s": batch * seq / statistics.median(cpus),
            "warmup_s": t_warm, "warmup_cpu_s": c_warm, "rss_mib": rss, **info}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--sides", default="ours,fp32,hf", help="which sides to run, in this order")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(_worker(a.worker, a.steps, a.threads, a.batch, a.seq)))
        return
    res = {}
    for kind in a.sides.split(","):
        if kind not in SIDES:
            p.error(f"--sides: {kind!r} is not one of {', '.join(SIDES)}")
        out = subprocess.run([sys.executable, __file__, "--worker", kind, "--steps", str(a.steps),
                              "--threads", str(a.threads), "--batch", str(a.batch), "--seq", str(a.seq)],
                             check=True, capture_output=True, text=True).stdout
        r = res[kind] = json.loads(out.strip().splitlines()[-1])
        how = f" ({'compiled, ' if r.get('compile') else ''}{r.get('precision', 'float32')})"
        print(f"{kind:>4}: {r['tok_s']:8.0f} tokens/s  {r['tok_cpu_s']:8.0f} tokens/CPU-s  warmup "
              f"{r['warmup_s']:5.1f} s ({r['warmup_cpu_s']:5.1f} CPU-s)  peak RSS {r['rss_mib']:6.0f} MiB{how}",
              flush=True)
        if r.get("cpu"):
            print(f"      precision choice: {r['cpu']}", flush=True)
    for kind in (k for k in ("ours", "fp32") if k in res and "hf" in res):
        print(f"ratio {kind}/hf: {res[kind]['tok_s'] / res['hf']['tok_s']:.2f}x wall, "
              f"{res[kind]['tok_cpu_s'] / res['hf']['tok_cpu_s']:.2f}x per CPU-s (goal >= 1.3x); "
              f"batch {a.batch}x{a.seq}, {a.threads} threads")


if __name__ == "__main__":
    main()
