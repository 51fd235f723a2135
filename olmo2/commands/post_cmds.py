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
    register_dpo(sub)
    register_rlvr(sub)


def register_dpo(sub) -> None:
    """Add `dpo`: preference pairs, length-normalised DPO against the frozen starting model."""
    p = sub.add_parser(
        "dpo", help="DPO on preference pairs (dpo_norm, cached frozen reference), on the one training loop",
        formatter_class=HelpFormatter,
        description="Direct preference optimisation of an SFT checkpoint on JSONL pairs ({'chosen': messages, "
                    "'rejected': messages}), rendered with the chat template, loss on assistant tokens. The "
                    "reference log-probs are computed once with the starting model frozen and cached in --out "
                    "(keyed by data, model, tokenizer and settings), so a resumed run does not recompute them. "
                    "Writes checkpoints, metrics.jsonl (loss, implicit rewards, margin, accuracy) and loss.png, "
                    "resumes from the newest checkpoint, and exports the final model to OUT/hf.",
        epilog="examples:\n"
               "  olmo2 dpo --model runs/sft/hf --data pairs.jsonl --out runs/dpo\n"
               "  olmo2 dpo --model allenai/OLMo-2-0425-1B-SFT --recipe olmo2_1b_dpo --data pairs.jsonl --out runs/dpo-1b")
    p.add_argument("--model", required=True, help="starting (SFT) model: an HF checkpoint directory (or hub id, online)")
    p.add_argument("--data", required=True, nargs="+", help="JSONL files with 'chosen' and 'rejected' message lists "
                                                            "(comma- or space-separated)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, ref_logps-*.json, metrics.jsonl, hf/")
    p.add_argument("--recipe", default="tiny_dpo", help="tiny_dpo (CPU) or olmo2_1b_dpo (the published 1B DPO)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override train.FIELD (as `olmo2 train --help` lists) or dpo.FIELD (beta, loss_type, "
                        "epochs, warmup_ratio, add_bos, data_seed); repeatable")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir or tokenizer.json (default: the --model's)")
    p.add_argument("--restart", action="store_true",
                   help="delete the checkpoints and metrics already in --out and start again from step 0")
    p.set_defaults(func=run_dpo_cmd)


def register_rlvr(sub) -> None:
    """Add `rlvr`: GRPO with verifiable rewards, rollouts from olmo2's own generation."""
    p = sub.add_parser(
        "rlvr", help="RLVR: GRPO with verifiable rewards (GSM8K/arithmetic, IFEval-style), on the one training loop",
        formatter_class=HelpFormatter,
        description="Reinforcement learning with verifiable rewards: each step samples rlvr.group_size "
                    "completions per prompt from the current model (KV-cache batched generation), scores "
                    "them with the prompt's verifier (10 if right, else 0), and takes a GRPO step: group-"
                    "normalised advantages, PPO-clip, k3 KL to the frozen starting model. Logs reward, KL, "
                    "clip fraction and response length per step, held-out accuracy with --eval-data; resumes "
                    "from the newest checkpoint; exports the final model to OUT/hf.",
        epilog="examples:\n"
               "  olmo2 rlvr --model runs/dpo/hf --data prompts.jsonl --eval-data held.jsonl --out runs/rlvr\n"
               "  olmo2 rlvr --model allenai/OLMo-2-0425-1B-DPO --recipe olmo2_1b_rlvr --data rlvr.jsonl --out runs/rlvr-1b")
    p.add_argument("--model", required=True, help="starting (DPO) model: an HF checkpoint directory (or hub id, online)")
    p.add_argument("--data", required=True, nargs="+", help="JSONL prompts: 'messages' (or 'prompt'), "
                                                            "'ground_truth', optional 'dataset' (gsm8k, arithmetic, ifeval)")
    p.add_argument("--eval-data", nargs="+", default=None, help="held-out prompts (same format) for the accuracy logged "
                                                               "every train.eval_every steps")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics.jsonl, loss.png, recipe.json, hf/")
    p.add_argument("--recipe", default="tiny_rlvr", help="tiny_rlvr (CPU) or olmo2_1b_rlvr (the published 1B RLVR)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override train.FIELD (as `olmo2 train --help` lists) or rlvr.FIELD (group_size, temperature, "
                        "max_new_tokens, max_prompt_tokens, clip, beta, unbiased_std, add_bos, eval_max_new_tokens)")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir or tokenizer.json (default: the --model's)")
    p.add_argument("--restart", action="store_true",
                   help="delete the checkpoints and metrics already in --out and start again from step 0")
    p.set_defaults(func=run_rlvr_cmd)


def run_rlvr_cmd(args) -> int:
    from olmo2.outdir import check_out
    from olmo2.post.rlvr import run_rlvr
    data = _data_list(args.data)
    held = _data_list(args.eval_data) if args.eval_data else None
    check_out(args.out, "run", inputs=[args.model, *data, *(held or []), args.tokenizer])
    run_rlvr(args.model, data, args.out, recipe=args.recipe, overrides=args.overrides, eval_sources=held,
             tokenizer=args.tokenizer, restart=args.restart)
    return 0


def run_dpo_cmd(args) -> int:
    from olmo2.outdir import check_out
    from olmo2.post.dpo_run import run_dpo
    data = _data_list(args.data)
    check_out(args.out, "run", inputs=[args.model, *data, args.tokenizer])
    run_dpo(args.model, data, args.out, recipe=args.recipe, overrides=args.overrides, tokenizer=args.tokenizer,
            restart=args.restart)
    return 0


def run_sft_cmd(args) -> int:
    from olmo2.outdir import check_out
    from olmo2.post.sft import lora_from_args, run_sft
    data = _data_list(args.data)
    lora = lora_from_args(args.lora, args.lora_alpha)
    check_out(args.out, "run", inputs=[args.model, *data, args.tokenizer])
    run_sft(args.model, data, args.out, recipe=args.recipe, overrides=args.overrides, lora=lora,
            tokenizer=args.tokenizer, restart=args.restart)
    return 0
