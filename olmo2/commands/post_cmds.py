"""Post-training verbs: `sft` (DPO and RLVR register here too).

    olmo2 sft --model runs/base/hf --data chats.jsonl --out runs/sft                     # tiny_sft
    olmo2 sft --model allenai/OLMo-2-0425-1B --data allenai/tulu-3-sft-olmo-2-mixture-0225 \\
        --recipe olmo2_1b_sft --out runs/sft-1b                                          # online
    olmo2 sft --model BASE --data a.jsonl,b.jsonl --out runs/lora --lora 16 --lora-alpha 32
    torchrun --nproc-per-node 8 -m olmo2 sft --recipe olmo2_1b_sft ...                   # FSDP2

Each verb runs the one training loop (olmo2/train/loop.py) with its stage's objective and
data; runs resume like `olmo2 train` and end with an HF checkpoint in RUN/hf.
"""
from __future__ import annotations

from olmo2.commands import HelpFormatter


def _data_list(values: list[str]) -> list[str]:
    """--data a.jsonl,b.jsonl c.jsonl → [a.jsonl, b.jsonl, c.jsonl]."""
    return [p for v in values for p in v.split(",") if p]


def register(sub) -> None:
    """Add `sft` to the top-level CLI."""
    p = sub.add_parser(
        "sft", help="supervised fine-tuning on chat data (optionally LoRA), on the one training loop",
        formatter_class=HelpFormatter,
        description="Fine-tune a base checkpoint on conversations in the HF `messages` JSONL format, "
                    "rendered with the OLMo 2 (tulu) chat template, with the loss on assistant tokens "
                    "only and examples packed into rows without attention across them. Writes training "
                    "checkpoints, metrics.jsonl and loss.png under --out, resumes from the newest "
                    "checkpoint there, and exports the final model to OUT/hf (LoRA adapters merged).",
        epilog="examples:\n"
               "  olmo2 sft --model runs/replicate-tiny/soup --data chats.jsonl --out runs/sft\n"
               "  olmo2 sft --model BASE --data a.jsonl,b.jsonl --out runs/lora --lora 16\n"
               "  olmo2 sft --model allenai/OLMo-2-0425-1B --recipe olmo2_1b_sft \\\n"
               "      --data allenai/tulu-3-sft-olmo-2-mixture-0225 --out runs/sft-1b     # online")
    p.add_argument("--model", required=True, help="base model: an HF checkpoint directory (or hub id, online)")
    p.add_argument("--data", required=True, nargs="+",
                   help="JSONL files with a 'messages' list per line (comma- or space-separated), or an HF "
                        "dataset id (online, needs `datasets`)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics.jsonl, loss.png, recipe.json, hf/")
    p.add_argument("--recipe", default="tiny_sft", help="tiny_sft (CPU) or olmo2_1b_sft (the published 1B SFT)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override train.FIELD (as `olmo2 train --help` lists) or sft.FIELD (epochs, "
                        "warmup_ratio, add_bos, packing, reduce_loss, data_seed); repeatable")
    p.add_argument("--lora", type=int, default=None, metavar="R",
                   help="train rank-R LoRA adapters on q/k/v/o and gate/up/down projections; base weights frozen")
    p.add_argument("--lora-alpha", type=float, default=None, metavar="A",
                   help="LoRA scale numerator: the update is (A/R)·BA (default 2R)")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir or tokenizer.json (default: the --model's)")
    p.add_argument("--restart", action="store_true",
                   help="delete the checkpoints and metrics already in --out and start again from step 0")
    p.set_defaults(func=run_sft_cmd)


def run_sft_cmd(args) -> int:
    from olmo2.outdir import check_out
    from olmo2.post.sft import lora_from_args, run_sft
    data = _data_list(args.data)
    lora = lora_from_args(args.lora, args.lora_alpha)
    check_out(args.out, "run", inputs=[args.model, *data, args.tokenizer])
    run_sft(args.model, data, args.out, recipe=args.recipe, overrides=args.overrides, lora=lora,
            tokenizer=args.tokenizer, restart=args.restart)
    return 0
