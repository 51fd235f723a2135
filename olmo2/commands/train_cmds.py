"""Training-stage verbs: `train`, `soup`, `replicate`, `export`.

    olmo2 train --recipe tiny_stage1 --set train.max_steps=50 --out runs/t1
    olmo2 train --recipe olmo2_1b_stage2:42 --data tok/dolmino --out runs/s2    # NAME[:SEED]
    torchrun --nproc-per-node 8 -m olmo2 train --recipe olmo2_1b_stage1 --out runs/s1
    olmo2 soup runs/a/hf runs/b/hf runs/c/hf --out runs/soup [--weights 1 1 2]
    olmo2 replicate --recipe tiny [--quick] [--out DIR]
    olmo2 export runs/t1/step-000050 --out runs/t1/hf [--tokenizer tokenizer.json]

`train` under torchrun: `olmo2.train.parallel.init_distributed()` joins the process group
torchrun describes (RANK/WORLD_SIZE), each rank builds the loader slice for its rank, and
the loop shards the model (FSDP2 by default); only rank 0 writes recipe.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from olmo2.commands import HelpFormatter
from olmo2.commands.model_cmds import STORED_DTYPES
from olmo2.errors import Olmo2Error


class _TrainHelp(argparse.Action):
    """`train --help`: the recipes and every `--set` field with its doc, built only when asked.

    The list comes from the recipe registry and the config dataclasses' field docstrings,
    which import numpy and friends; doing that at parser build time would slow down every
    other verb's --help."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.epilog = (parser.epilog or "") + "\n\n" + train_reference()
        parser.print_help()
        parser.exit()


def train_reference() -> str:
    """The recipes and the `--set` fields (type, default, doc), as text for `train --help`."""
    import dataclasses
    import textwrap

    from olmo2.config import ModelConfig
    from olmo2.recipes import RECIPES, STAGE2
    from olmo2.train.config import TrainConfig, field_docs

    lines = ["recipes (--recipe NAME, or NAME:SEED for stage-2 recipes):"]
    for name, fn in RECIPES.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        lines.append(f"  {name + (':SEED' if name in STAGE2 else ''):<22} {doc}")
    for section, cls in (("train", TrainConfig), ("model", ModelConfig)):
        docs = field_docs(cls)
        lines.append(f"\n--set {section}.FIELD=VALUE fields (defaults shown are the dataclass's; "
                     f"recipes set their own):")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else "required"
            lines.append(f"  {section}.{f.name} ({f.type}, default {default})")
            if f.name in docs:
                lines += textwrap.wrap(docs[f.name], width=88, initial_indent=" " * 6,
                                       subsequent_indent=" " * 6)
    lines.append("\n  data.seed (int): the mix's sampling seed (other data comes from --data)")
    return "\n".join(lines)


def register(sub) -> None:
    """Add `train`, `soup`, `replicate` and `export` to the top-level CLI."""
    p = sub.add_parser(
        "train", help="train one stage from a recipe (torchrun for many processes)",
        formatter_class=HelpFormatter, add_help=False,
        description="Run the one training loop for a recipe (a stage: pretraining or anneal), "
                    "writing sharded checkpoints, metrics.jsonl and loss.png under --out; "
                    "resumes from the latest complete checkpoint there. Under torchrun it "
                    "shards the model with FSDP2 across the processes.",
        epilog="examples:\n"
               "  olmo2 train --recipe tiny_stage1 --set train.max_steps=50 --out runs/t1\n"
               "  olmo2 train --recipe tiny_stage2:42 --set train.init_from=runs/t1/step-000050 --out runs/t2\n"
               "  torchrun --nproc-per-node 8 -m olmo2 train --recipe olmo2_1b_stage1 --data tok/mix --out runs/s1")
    p.add_argument("-h", "--help", action=_TrainHelp,
                   help="show this help, the recipes and every --set field, and exit")
    p.add_argument("--recipe", required=True,
                   help="recipe NAME or NAME:SEED (listed below)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a field, e.g. train.lr=1e-3 or model.n_layers=2 (repeatable; fields below)")
    p.add_argument("--data", nargs="+", default=None,
                   help="tokenized shard dirs (`olmo2 data tokenize` output) instead of the recipe's mix")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json: checked against --data metadata, "
                                                     "and sizes the model's vocab and eos/pad ids")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics.jsonl, loss.png, recipe.json")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe as JSON and exit")
    p.add_argument("--restart", action="store_true",
                   help="delete the checkpoints and metrics already in --out and start again from step 0 "
                        "(without it a run directory with checkpoints resumes from the newest that loads)")
    p.set_defaults(func=run_train)

    p = sub.add_parser(
        "soup", help="average checkpoints (uniform or weighted), tensor by tensor",
        formatter_class=HelpFormatter,
        description="Average the weights of checkpoints of one architecture (e.g. the stage-2 "
                    "anneals of several seeds), one tensor at a time so memory stays at about "
                    "one checkpoint; writes an HF directory with the first input's tokenizer "
                    "and a model card.",
        epilog="examples:\n  olmo2 soup runs/s2-42/hf runs/s2-666/hf runs/s2-42069/hf --out runs/soup\n"
               "  olmo2 soup a/ b/ --out ab --weights 3 1")
    p.add_argument("checkpoints", nargs="+", help="HF checkpoint directories (or training checkpoints)")
    p.add_argument("--out", required=True, help="output HF directory (written atomically)")
    p.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per checkpoint (normalised)")
    p.add_argument("--force", action="store_true", help="replace --out if it already holds a checkpoint")
    p.set_defaults(func=run_soup)

    p = sub.add_parser(
        "replicate", help="the whole recipe end to end on the offline demo corpus",
        formatter_class=HelpFormatter,
        description="Build the demo corpus, tokenize it, pretrain (stage 1), anneal with several "
                    "seeds (stage 2), soup them, evaluate and write a Markdown report with loss "
                    "curves; every model it leaves is an HF directory with a model card.",
        epilog="examples:\n  olmo2 replicate --recipe tiny            # `make demo`\n"
               "  olmo2 replicate --recipe tiny --quick    # `make demo-quick`\n"
               "  olmo2 replicate --recipe tiny --through instruct             # + SFT → DPO → RLVR\n"
               "  olmo2 replicate --recipe tiny --through instruct --from-run runs/replicate-tiny --out runs/instruct")
    p.add_argument("--recipe", default="tiny", help="replication to run (tiny; the published recipes need `train`)")
    p.add_argument("--quick", action="store_true", help="a ~3-minute variant (fewer steps)")
    p.add_argument("--out", default=None, help="output directory (default runs/replicate-<recipe>[-quick], "
                                               "or --from-run's directory)")
    p.add_argument("--through", default="pretrain", choices=("pretrain", "sft", "dpo", "instruct"),
                   help="stop after pretraining (the default), or post-train on offline data through SFT, "
                        "DPO or RLVR (instruct), each stage measured against the one before (olmo2.post.chain)")
    p.add_argument("--from-run", default=None, metavar="DIR",
                   help="post-train the soup of an existing replicate run DIR instead of pretraining again")
    p.set_defaults(func=run_replicate)

    p = sub.add_parser(
        "export", help="write a training checkpoint as an HF directory",
        formatter_class=HelpFormatter,
        description="Convert a training (DCP, sharded) checkpoint into an HF directory "
                    "(config.json, safetensors, model card, optional tokenizer) that "
                    "transformers' Olmo2ForCausalLM and `olmo2 generate` load.",
        epilog="examples:\n  olmo2 export runs/t1 --out runs/t1/hf --tokenizer tokenizer.json   # latest step\n"
               "  olmo2 export runs/t1/step-000050 --out hf/t1-50 --dtype bfloat16")
    p.add_argument("checkpoint", help="a training checkpoint (run/step-XXXXXX) or a run dir (its latest)")
    p.add_argument("--out", required=True, help="output HF directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (or dir) to store with the model")
    p.add_argument("--dtype", default=None, choices=STORED_DTYPES, help="stored dtype (default: as trained)")
    p.add_argument("--force", action="store_true", help="replace --out if it already holds a checkpoint")
    p.set_defaults(func=run_export)


def run_train(args) -> int:
    import json

    from olmo2.config import pad_vocab
    from olmo2.data.loader import Loader
    from olmo2.fsio import atomic_file, naming_write_errors
    from olmo2.outdir import check_out
    from olmo2.recipes import apply_overrides, get_recipe
    from olmo2.train import parallel
    from olmo2.train.config import check_run
    from olmo2.train.loop import train

    recipe = apply_overrides(get_recipe(args.recipe), args.overrides)
    if args.tokenizer:
        from olmo2.tokenizer import Tokenizer
        tok = Tokenizer.from_pretrained(args.tokenizer)
        m = recipe.model
        if tok.vocab_size > m.vocab_size or m.eos_token_id != tok.eos_id:
            recipe = recipe.replace(model=m.replace(vocab_size=max(m.vocab_size, pad_vocab(tok.vocab_size)),
                                                    eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
    if args.print_config:
        print(recipe.to_json())
        return 0
    t = recipe.train
    out = Path(args.out)
    check_out(out, "run", inputs=[*(args.data or []), t.init_from])
    if args.data:  # before any loader or model: the data's ids must exist in the model
        from olmo2.data.shards import load_metadata
        check_run(recipe.model, t, load_metadata(args.data), " ".join(args.data))
    else:
        check_run(recipe.model, t)
    import torch

    from olmo2.memory import check_model_memory
    # CPU training holds weights, gradients and two AdamW moments in fp32 (16 bytes per
    # parameter); on GPUs the host only builds the model before sharding (4 bytes).
    check_model_memory(recipe.model, 4 if torch.cuda.is_available() else 16, f"--recipe {args.recipe}")
    if args.restart:
        recipe = recipe.replace(train=t.replace(resume=None))
        t = recipe.train
    parallel.init_distributed()
    try:
        kw = dict(seq_len=t.seq_len, global_batch_size=t.global_batch_size, seed=t.seed,
                  rank=parallel.rank(), world_size=parallel.world_size())
        if args.data:
            tok_path = args.tokenizer
            if tok_path and Path(tok_path).is_dir():
                tok_path = str(Path(tok_path) / "tokenizer.json")
            loader = Loader.from_dirs(args.data, tokenizer=tok_path, **kw)
        else:
            loader = Loader.from_mix(recipe.data, **kw)
        if parallel.rank() == 0:
            resolved = recipe.to_dict()
            if args.data:
                resolved["data"] = {"dirs": list(args.data)}
            resolved["overrides"] = list(args.overrides)
            with atomic_file(out / "recipe.json") as f:
                json.dump(resolved, f, indent=2)
        with naming_write_errors(out, name_any=False):  # disk full mid-run names the run dir
            res = train(recipe.model, t, loader, out, restart=args.restart)
        parallel.print0(f"done: step {res.step}, {res.tokens:,} tokens; last checkpoint {res.last_checkpoint}")
    finally:
        parallel.cleanup_distributed()
    return 0


def run_soup(args) -> int:
    from olmo2.outdir import check_out
    from olmo2.train.soup import normalise_weights, soup
    check_out(args.out, "hf", inputs=args.checkpoints, force=args.force)
    w = normalise_weights(len(args.checkpoints), args.weights)
    out = soup(args.checkpoints, args.out, weights=w)
    print(f"wrote {out}: average of {len(args.checkpoints)} checkpoints with weights "
          f"{', '.join(f'{x:.4g}' for x in w)}")
    return 0


def run_replicate(args) -> int:
    from olmo2.outdir import check_out
    from olmo2.replicate import default_out, print_result, replicate
    if args.from_run is not None:
        from olmo2.post.chain import base_of_run
        if args.through == "pretrain":
            raise Olmo2Error("--from-run: it post-trains an existing run; add --through sft|dpo|instruct")
        base, out = base_of_run(args.from_run), args.out or args.from_run
        check_out(out, "replicate", inputs=[] if out == args.from_run else [args.from_run])
    else:
        out = args.out or default_out(args.recipe, args.quick)
        check_out(out, "replicate")
        res = replicate(args.recipe, out, quick=args.quick)
        print_result(res)
        base = res.final_model
    if args.through != "pretrain":
        from olmo2.post.chain import print_chain, tiny_chain
        print_chain(tiny_chain(base, out, through=args.through, quick=args.quick))
    return 0


def run_export(args) -> int:
    from olmo2.outdir import check_out
    from olmo2.train.state import export_hf, latest_checkpoint, read_json
    ck = Path(args.checkpoint)
    if not (ck / "train_state.json").exists():
        latest = latest_checkpoint(ck)
        if latest is None:
            raise Olmo2Error(f"{ck}: not a training checkpoint and holds none (expected step-XXXXXX/ with "
                             f"train_state.json)")
        ck = latest
    check_out(args.out, "hf", inputs=[ck, args.tokenizer], force=args.force)
    tok = None
    if args.tokenizer:
        from olmo2.tokenizer import Tokenizer
        tok = Tokenizer.from_pretrained(args.tokenizer)
        vocab = read_json(ck, "train_config.json").get("model", {}).get("vocab_size")
        if isinstance(vocab, int):  # before writing anything: a model that cannot embed its ids
            tok.check_fits(vocab, f"{ck} (model.vocab_size)")
    out = export_hf(ck, args.out, tokenizer=tok, dtype=args.dtype)
    print(f"wrote {out} from {ck}")
    return 0
