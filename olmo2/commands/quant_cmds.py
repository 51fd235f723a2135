"""`olmo2 quantize`: write a weight-quantized checkpoint (and, with --report, its quality).

    olmo2 quantize runs/replicate-tiny/soup --bits 8 --out runs/soup-int8
    olmo2 quantize runs/replicate-tiny/soup --bits 4 --group-size 128 --out runs/soup-int4 --report
    olmo2 generate --model runs/soup-int4 --prompt "The king said"   # loads quantized as stored

--report scores bf16, int8 and int4 weights of MODEL on the demo validation text
(olmo2/quant/report.py) and writes quant_report.md / .json into --out beside the weights;
it needs the demo corpus (`olmo2 data demo`) or --val-file.
"""
from __future__ import annotations

import sys

from olmo2.commands import HelpFormatter
from olmo2.errors import Olmo2Error

BITS = {16: "bf16", 8: "int8", 4: "int4"}


def register(sub) -> None:
    p = sub.add_parser(
        "quantize", help="write an int8 / int4 (or bf16) weight-quantized checkpoint; --report: its quality",
        formatter_class=HelpFormatter,
        description="Quantize MODEL's weights (int8 per output channel, int4 in groups of --group-size "
                    "input columns, or bf16) and write a directory every olmo2 verb loads as is. "
                    "--report adds perplexity, mean KL and top-1 agreement of each precision vs bf16 "
                    "on the demo validation text.",
        epilog="example:\n  olmo2 quantize runs/replicate-tiny/soup --bits 4 --out runs/soup-int4 --report\n"
               "  olmo2 generate --model runs/soup-int4 --prompt 'The king said' --temperature 0")
    p.add_argument("model", help="float checkpoint directory (HF format) or hub id")
    p.add_argument("--bits", type=int, choices=sorted(BITS), required=True, help="8 = int8, 4 = int4, 16 = bf16")
    p.add_argument("--group-size", type=int, default=128,
                   help="int4: input columns per scale/zero (32, 64, 128, 256); a linear it does not divide is stored int8")
    p.add_argument("--lm-head", choices=("int8", "int4", "bf16"), default=None,
                   help="store the LM head in this format instead of --bits'")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--force", action="store_true", help="replace --out if it already holds a checkpoint")
    p.add_argument("--report", action="store_true", help="also write quant_report.md/.json (quality vs bf16)")
    p.add_argument("--val-file", default=None, help="--report: validation JSONL (default: the demo corpus's val.jsonl)")
    p.set_defaults(func=run_quantize)


def run_quantize(args) -> int:
    from pathlib import Path

    from olmo2.checkpoint import load_model, resolve
    from olmo2.outdir import check_out
    from olmo2.quant.io import is_quantized, save_quantized
    from olmo2.quant.swap import QuantConfig, quantize_model
    from olmo2.tokenizer import Tokenizer
    mode = BITS[args.bits]
    cfg = QuantConfig(mode, args.group_size, args.lm_head).validated()
    src = resolve(args.model)
    if is_quantized(src):
        raise Olmo2Error(f"{src}: already quantized; quantize the original float checkpoint")
    check_out(args.out, kind="hf", inputs=[src], force=args.force)
    passages = tok = None
    if args.report:  # a missing corpus fails before any work
        from olmo2.quant.report import demo_passages
        passages = demo_passages(args.val_file)
    try:
        tok = Tokenizer.from_pretrained(src)
    except Olmo2Error:
        tok = None  # a checkpoint without tokenizer files still quantizes
    if args.report and tok is None:
        raise Olmo2Error(f"{src}: --report needs the checkpoint's tokenizer.json")
    model = load_model(src, dtype=None)
    quantize_model(model, cfg.mode, cfg.group_size, cfg.lm_head)
    save_quantized(model, args.out, tokenizer=tok, description=f"Quantized from {args.model}.")
    n8 = sum(1 for t in model.quant_plan.values() if t.fmt == "int8")
    n4 = sum(1 for t in model.quant_plan.values() if t.fmt == "int4")
    print(f"wrote {args.out}: {mode}, {n4} int4 / {n8} int8 / "
          f"{len(model.quant_plan) - n4 - n8} bf16 modules", file=sys.stderr)
    if args.report:
        from olmo2.fsio import atomic_file
        from olmo2.quant.report import quality_report, report_json, report_markdown
        del model
        rows = quality_report(src, [m for m in ("int8", "int4") if m != "bf16"], passages, tok)
        md = report_markdown(rows, f"Quantization quality vs bf16 weights: {args.model}")
        for name, text in (("quant_report.md", md), ("quant_report.json", report_json(rows))):
            with atomic_file(Path(args.out) / name, "w") as f:
                f.write(text)
        print(md)
    return 0
