"""Training throughput on CPU: our loop's step vs a plain transformers step, same run.

    python benchmarks/cpu_train.py [--steps 8] [--threads 2] [--batch 16] [--seq 128]

Each side runs in its own subprocess (so peak RSS is its own) on the tiny replication's
model (`olmo2.recipes.tiny.tiny_model`), fp32, the same batch, threads and random tokens:
- ours: `Olmo2` forward → `olmo2.train.loop.micro_batch_loss` (CE + z-loss, chunked by
  default) → backward →
  global-norm clip → AdamW over OLMo 2's param groups (`olmo2.train.optim`), as the loop does.
- hf:   `transformers.Olmo2ForCausalLM(input_ids, labels=...)` → backward → clip →
  `torch.optim.AdamW`.
Prints tokens/s of each (median step after 2 warmup steps), the ratio ours/hf (goal ≥ 1.3)
and each side's peak RSS. Not a test: numbers depend on the machine and its load.
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


def _worker(kind: str, steps: int, threads: int, batch: int, seq: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from olmo2.recipes.tiny import tiny_model
    cfg = tiny_model()
    x = torch.randint(0, cfg.vocab_size - 2, (batch, seq))
    if kind == "ours":
        from olmo2.model import Olmo2
        from olmo2.train.config import TrainConfig
        from olmo2.train.loop import micro_batch_loss
        from olmo2.train.optim import build_optimizer
        model = Olmo2(cfg)
        model.reset_parameters()
        tc = TrainConfig(max_steps=1)
        opt = build_optimizer(model, tc)

        def step():
            ce, z = micro_batch_loss(model, x, x, tc, contextlib.nullcontext())
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
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    return {"tok_s": batch * seq / statistics.median(times), "rss_mib": rss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(_worker(a.worker, a.steps, a.threads, a.batch, a.seq)))
        return
    res = {}
    for kind in ("ours", "hf"):
        out = subprocess.run([sys.executable, __file__, "--worker", kind, "--steps", str(a.steps),
                              "--threads", str(a.threads), "--batch", str(a.batch), "--seq", str(a.seq)],
                             check=True, capture_output=True, text=True).stdout
        res[kind] = json.loads(out.strip().splitlines()[-1])
        print(f"{kind:>4}: {res[kind]['tok_s']:8.0f} tokens/s  peak RSS {res[kind]['rss_mib']:6.0f} MiB", flush=True)
    ratio = res["ours"]["tok_s"] / res["hf"]["tok_s"]
    print(f"ratio ours/hf: {ratio:.2f}x (goal >= 1.3x); batch {a.batch}x{a.seq}, {a.threads} threads, fp32")


if __name__ == "__main__":
    main()
