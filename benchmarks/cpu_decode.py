"""CPU decode benchmark: olmo2 vs transformers `Olmo2ForCausalLM.generate`, same checkpoint.

    python benchmarks/cpu_decode.py                  # random olmo2-1b (~6 GB fp32, built once)
    python benchmarks/cpu_decode.py --quick          # small preset, seconds: a smoke test
    python benchmarks/cpu_decode.py --model DIR      # any OLMo 2 HF checkpoint

Batch 1, a prompt of random ids, greedy decoding of a fixed number of new tokens (EOS
disabled on both sides), fp32, `torch.set_num_threads(--threads)`. Each system runs in
its own subprocess so its peak RSS (`ru_maxrss`) is its own; each loads the checkpoint,
does a tiny warm-up generation, then the timed one:

- prefill tok/s = prompt tokens / time to first token (TTFT)
- decode tok/s  = (N - 1) / (time from first to last token); for transformers the
  token times come from a streamer, which it calls right after each token is chosen
- peak RSS / checkpoint bytes can be < 1: weights are mmapped, and embedding rows of
  tokens never seen are never paged in
- load s, RSS growth during load (RSS after load minus RSS before, i.e. without the
  interpreter and libraries) vs checkpoint bytes (a copying loader would show ~2x),
  peak RSS, and whether the two greedy token streams are identical.

The random checkpoint goes to `$OLMO2_CACHE/bench` (default /tmp/olmo2-bench) and is
reused. Footgun: other CPU load on the machine skews both systems; rerun when idle.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def ckpt_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


def ensure_checkpoint(preset_name: str, cache: Path) -> Path:
    """A random-init checkpoint of `preset_name`, created once under `cache`.

    Built in a subprocess: Linux carries a process's peak RSS over to the children it
    forks, so building the 6 GB model here would inflate both workers' ru_maxrss."""
    out = cache / f"{preset_name}-random"
    if (out / "config.json").exists():
        return out
    print(f"building a random {preset_name} checkpoint in {out} (once) ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", "build", "--preset", preset_name, "--model", str(out)],
                   check=True)
    print(f"  done in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    return out


def worker_build(args) -> None:
    import torch

    from olmo2.checkpoint import save_model
    from olmo2.config import preset
    from olmo2.model import Olmo2
    torch.manual_seed(0)
    with torch.no_grad():
        model = Olmo2(preset(args.preset))
        model.reset_parameters()
        save_model(model, args.model)


# ---- workers (one system per process) ----------------------------------------------
def _prompt(vocab: int, n: int):
    import torch
    return torch.randint(0, min(vocab, 100000), (1, n), generator=torch.Generator().manual_seed(0))


def worker_olmo2(args) -> dict:
    import torch

    from olmo2.checkpoint import load_model
    from olmo2.infer.generate import iter_tokens
    from olmo2.infer.sampling import SamplingParams
    rss0 = rss_now_mb()
    t = time.perf_counter()
    model = load_model(args.model, dtype=torch.float32)
    load_s, rss_load = time.perf_counter() - t, rss_now_mb()
    ids = _prompt(model.config.vocab_size, args.prompt_len)
    greedy = SamplingParams(temperature=0)
    list(iter_tokens(model, ids[:, :8], 2, greedy))  # warm-up
    times, toks = [], []
    t0 = time.perf_counter()
    for tok in iter_tokens(model, ids, args.new_tokens, greedy):
        toks.append(int(tok[0]))
        times.append(time.perf_counter())
    return dict(load_s=load_s, rss_base_mb=rss0, rss_load_mb=rss_load, ttft_s=times[0] - t0, decode_s=times[-1] - times[0], tokens=toks)


def worker_hf(args) -> dict:
    import torch
    from transformers import Olmo2ForCausalLM
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        """Timestamps each put(); the first put is the prompt, then one per new token."""

        def __init__(self):
            self.times, self.toks, self.seen_prompt = [], [], False

        def put(self, value):
            if not self.seen_prompt:
                self.seen_prompt = True
                return
            self.times.append(time.perf_counter())
            self.toks.append(int(value.reshape(-1)[0]))

        def end(self):
            pass

    rss0 = rss_now_mb()
    t = time.perf_counter()
    model = Olmo2ForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    load_s, rss_load = time.perf_counter() - t, rss_now_mb()
    model.generation_config.eos_token_id = None
    ids = _prompt(model.config.vocab_size, args.prompt_len)
    kw = dict(do_sample=False, pad_token_id=model.config.pad_token_id, attention_mask=torch.ones_like(ids))
    with torch.inference_mode():
        model.generate(ids[:, :8], max_new_tokens=2, **{**kw, "attention_mask": torch.ones_like(ids[:, :8])})
        clock = Clock()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=args.new_tokens, streamer=clock, **kw)
    return dict(load_s=load_s, rss_base_mb=rss0, rss_load_mb=rss_load, ttft_s=clock.times[0] - t0,
                decode_s=clock.times[-1] - clock.times[0], tokens=clock.toks)


def run_worker(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    res = (worker_olmo2 if args.worker == "olmo2" else worker_hf)(args)
    res["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(res), flush=True)


def spawn(system: str, args, model_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", system, "--model", str(model_dir), "--threads", str(args.threads),
           "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        sys.exit(f"{system} worker failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint dir (default: a random --preset checkpoint)")
    ap.add_argument("--preset", default="olmo2-1b", help="preset for the random checkpoint")
    ap.add_argument("--quick", action="store_true", help="small preset, 32+32 tokens: a smoke test")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("olmo2", "hf"), default=None, help="run one system only")
    ap.add_argument("--worker", choices=("olmo2", "hf", "build"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "build":
        return worker_build(args)
    if args.worker:
        return run_worker(args)
    if args.quick:
        args.preset, args.prompt_len, args.new_tokens = "tiny-demo", 32, 32
    cache = Path(os.environ.get("OLMO2_CACHE", "/tmp/olmo2-bench")) / "bench"
    model_dir = Path(args.model) if args.model else ensure_checkpoint(args.preset, cache)
    nbytes = ckpt_bytes(model_dir)
    systems = [args.only] if args.only else ["olmo2", "hf"]
    res = {s: spawn(s, args, model_dir) for s in systems}

    print(f"\n{model_dir}  ({nbytes / 2**30:.2f} GiB fp32 safetensors)  batch 1, prompt {args.prompt_len}, "
          f"{args.new_tokens} new greedy tokens, {args.threads} threads")
    names = {"olmo2": "olmo2", "hf": "transformers"}
    print(f"{'system':<13}{'load s':>8}{'+RSS load':>10}{'/ckpt':>7}{'prefill tok/s':>15}{'TTFT s':>8}"
          f"{'decode tok/s':>14}{'peak RSS':>11}{'/ckpt':>7}")
    for s, r in res.items():
        r["load_growth"] = (r["rss_load_mb"] - r["rss_base_mb"]) * 2**20 / nbytes
        r["prefill_tps"] = args.prompt_len / r["ttft_s"]
        r["decode_tps"] = (len(r["tokens"]) - 1) / r["decode_s"]
        print(f"{names[s]:<13}{r['load_s']:>8.1f}{(r['rss_load_mb'] - r['rss_base_mb']) / 1024:>7.2f}GiB{r['load_growth']:>7.2f}"
              f"{r['prefill_tps']:>15.1f}{r['ttft_s']:>8.2f}{r['decode_tps']:>14.2f}{r['peak_rss_mb'] / 1024:>8.2f}GiB"
              f"{r['peak_rss_mb'] * 2**20 / nbytes:>7.2f}")
    if len(res) == 2:
        a, b = res["olmo2"], res["hf"]
        print(f"olmo2/transformers: prefill {a['prefill_tps'] / b['prefill_tps']:.2f}x, "
              f"decode {a['decode_tps'] / b['decode_tps']:.2f}x, load {b['load_s'] / a['load_s']:.2f}x faster")
        same = a["tokens"] == b["tokens"]
        first = next((i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y), None)
        print(f"greedy tokens identical: {same}" + ("" if same else f" (first difference at new token {first})"))
    for s, r in res.items():
        if nbytes > 2**30 and r["load_growth"] > 1.5:
            print(f"WARNING: {names[s]} RSS grew by {r['load_growth']:.2f}x the checkpoint while loading (a copy?)")


if __name__ == "__main__":
    main()
