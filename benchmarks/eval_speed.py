"""Eval speed: `olmo2 eval` (native backend) vs lm-eval's HF backend, same checkpoint, same run.

    python benchmarks/eval_speed.py                    # random 130M-param OLMo 2, dolma2 tokenizer
    python benchmarks/eval_speed.py --quick            # tiny shape: a smoke test
    python benchmarks/eval_speed.py --model DIR        # any OLMo 2 HF checkpoint with tokenizer

Needs lm-eval (`pip install "lm-eval[hf]==0.4.13"`; not an olmo2 dependency) and the shared data
(`--data-dir`, default ../shared/data). Measures examples/s on the same items and prompts:

- TruthfulQA MC1+MC2 scoring (`--tqa N` questions): lm-eval's own truthfulqa_mc1/mc2 YAMLs
  pointed at the local file; olmo2 scores each context once and its choices on top (KV reuse).
- GSM8K 8-shot generation (`--gsm N` problems, `--max-new N` tokens): lm-eval `generate_until`
  on the OLMES contexts with the OLMES stop sequences; olmo2 batched greedy decoding.

Then it projects the wall time of full TruthfulQA (817) + GSM8K (1319) for the real
OLMo-2-0425-1B in fp32 on this CPU from token counts of the real prompts (dolma2) and the
1B rates measured in docs/cpu-baseline.md (prefill ~97 tok/s, decode 5.4 tok/s at batch 1,
~100 tok/s compute ceiling batched). Footgun: other load on the machine skews both sides;
rerun when idle. Both sides run in this process, one after the other, with 2 threads.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PREFILL_1B, DECODE_1B, BATCHED_1B = 97.0, 5.4, 100.0  # tok/s, fp32, 2 cores (docs/cpu-baseline.md)


def make_model(out: Path, quick: bool) -> Path:
    import torch

    from olmo2.checkpoint import save_model
    from olmo2.config import ModelConfig
    from olmo2.data.sources import dolma2_tokenizer_path
    from olmo2.model import Olmo2
    from olmo2.tokenizer import Tokenizer
    if (out / "config.json").exists():
        return out
    cfg = ModelConfig(d_model=128 if quick else 512, n_layers=2 if quick else 8, n_heads=4 if quick else 8,
                      n_kv_heads=4 if quick else 8, d_ff=384 if quick else 1536, max_seq_len=4096)
    model = Olmo2(cfg)
    model.reset_parameters(generator=torch.Generator().manual_seed(0))
    save_model(model, out, tokenizer=Tokenizer.from_file(dolma2_tokenizer_path()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--tqa", type=int, default=24)
    ap.add_argument("--gsm", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    from olmo2.eval import gsm8k
    from olmo2.eval.scoring import load_backend
    from olmo2.eval.task_types import EvalOptions
    from olmo2.eval.truthfulqa import load_truthfulqa, run_truthfulqa
    data = Path(args.data_dir)
    cache = Path(tempfile.gettempdir()) / f"olmo2-bench-eval-{'quick' if args.quick else 'base'}"
    model_dir = Path(args.model) if args.model else make_model(cache, args.quick)
    tqa = load_truthfulqa(data / "truthfulqa" / "mc_task.json")
    gsm_items = gsm8k.load_gsm8k_jsonl(data / "gsm8k" / "test.jsonl")
    gsm_ctx = [gsm8k.olmes_context(it.question) for it in gsm_items[:args.gsm]]
    opts = EvalOptions(limit=args.tqa, progress=False)

    native = load_backend("native", str(model_dir), batch_size="auto")
    t0 = time.perf_counter()
    run_truthfulqa(native, opts, tqa)
    t_nat_tqa = time.perf_counter() - t0
    t0 = time.perf_counter()
    native.generate_until(gsm_ctx, gsm8k.STOPS, args.max_new)
    t_nat_gsm = time.perf_counter() - t0

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    with tempfile.TemporaryDirectory() as tmp:
        from olmo2.eval.lmeval_tasks import generate_task, truthfulqa_tasks
        tdir = Path(tmp) / "tasks"
        mc1, mc2 = truthfulqa_tasks(tdir, tqa[:args.tqa], "bench_tqa")
        gsm_task = generate_task(tdir, gsm_ctx, "bench_gsm", gsm8k.STOPS, args.max_new)
        lm = HFLM(pretrained=str(model_dir), batch_size=8, device="cpu", dtype="float32")
        tm = TaskManager(include_path=str(tdir))
        t0 = time.perf_counter()
        simple_evaluate(model=lm, tasks=[mc1, mc2], task_manager=tm)
        t_lm_tqa = time.perf_counter() - t0
        t0 = time.perf_counter()
        simple_evaluate(model=lm, tasks=[gsm_task], task_manager=tm)
        t_lm_gsm = time.perf_counter() - t0

    print(f"model {model_dir}, {args.threads} threads")
    print(f"TruthfulQA ({args.tqa} q): olmo2 {args.tqa / t_nat_tqa:.2f} ex/s, lm-eval HF {args.tqa / t_lm_tqa:.2f} "
          f"ex/s -> {t_lm_tqa / t_nat_tqa:.2f}x")
    print(f"GSM8K ({args.gsm} problems, <= {args.max_new} new tokens): olmo2 {args.gsm / t_nat_gsm:.2f} ex/s, "
          f"lm-eval HF {args.gsm / t_lm_gsm:.2f} ex/s -> {t_lm_gsm / t_nat_gsm:.2f}x")

    # Projection for the real 1B: token work of the full tasks under each method.
    from olmo2.eval.native import common_prefix
    enc = native.tok.encode
    tq_ids = [enc(_tqa_ctx(it)) for it in tqa]
    tq_p = len(common_prefix(tq_ids))
    tq_cont = sum(len(enc(" " + c)) for it in tqa for c, _ in it.mc1 + it.mc2)
    tq_ours = tq_p + sum(len(c) - tq_p for c in tq_ids) + tq_cont
    tq_full = sum(len(c) * (len(it.mc1) + len(it.mc2)) for c, it in zip(tq_ids, tqa)) + tq_cont
    gs_ids = [enc(gsm8k.olmes_context(it.question)) for it in gsm_items]
    gs_p = len(common_prefix(gs_ids))
    gs_full = sum(len(c) for c in gs_ids)
    gs_ours = gs_p + gs_full - gs_p * len(gs_ids)
    gs_new = sum(len(enc(" " + it.answer.split("####")[0])) for it in gsm_items)  # ~ a CoT answer's length
    h = 3600.0
    print(f"Projection, OLMo-2-0425-1B fp32 on this CPU (prefill {PREFILL_1B:.0f} tok/s, decode {DECODE_1B} tok/s "
          f"batch 1, ~{BATCHED_1B:.0f} tok/s batched):")
    print(f"  TruthfulQA 817: olmo2 {tq_ours:,} tokens -> {tq_ours / PREFILL_1B / h:.2f} h; "
          f"one forward per choice (lm-eval) {tq_full:,} tokens -> {tq_full / PREFILL_1B / h:.2f} h")
    print(f"  GSM8K 1319 prompts: olmo2 {gs_ours:,} tokens (8-shot prefix once) -> {gs_ours / PREFILL_1B / h:.2f} h; "
          f"per prompt (lm-eval) {gs_full:,} -> {gs_full / PREFILL_1B / h:.2f} h")
    print(f"  GSM8K ~{gs_new:,} new tokens (reference-CoT length): {gs_new / BATCHED_1B / h:.2f} h batched (olmo2), "
          f"{gs_new / DECODE_1B / h:.2f} h at batch 1")
    total_ours = (tq_ours + gs_ours) / PREFILL_1B + gs_new / BATCHED_1B
    total_peer = (tq_full + gs_full) / PREFILL_1B + gs_new / DECODE_1B
    print(f"  full GSM8K + TruthfulQA: olmo2 ~{total_ours / h:.1f} h vs ~{total_peer / h:.1f} h one-forward-per-"
          f"request with batch-1 decoding")
    return 0


def _tqa_ctx(it) -> str:
    from olmo2.eval.truthfulqa import plain_context
    return plain_context(it.question)


if __name__ == "__main__":
    sys.exit(main())
