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

from pathlib import Path

from olmo2.errors import Olmo2Error


def register(sub) -> None:
    p = sub.add_parser("train", help="train one stage from a recipe (torchrun for many processes)")
    p.add_argument("--recipe", required=True,
                   help="recipe NAME or NAME:SEED (olmo2_1b_stage1, olmo2_1b_stage2:42, tiny_stage1, ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a field, e.g. train.lr=1e-3 or model.n_layers=2 (repeatable)")
    p.add_argument("--data", nargs="+", default=None,
                   help="tokenized shard dirs (`olmo2 data tokenize` output) instead of the recipe's mix")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json: checked against --data metadata, "
                                                     "and sizes the model's vocab and eos/pad ids")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics.jsonl, loss.png, recipe.json")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe as JSON and exit")
    p.set_defaults(func=run_train)

    p = sub.add_parser("soup", help="average checkpoints (uniform or weighted), tensor by tensor")
    p.add_argument("checkpoints", nargs="+", help="HF checkpoint directories (or training checkpoints)")
    p.add_argument("--out", required=True, help="output HF directory (written atomically)")
    p.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per checkpoint (normalised)")
    p.set_defaults(func=run_soup)

    p = sub.add_parser("replicate", help="the whole recipe end to end on the offline demo corpus")
    p.add_argument("--recipe", default="tiny", help="replication to run (tiny)")
    p.add_argument("--quick", action="store_true", help="a ~3-minute variant (fewer steps)")
    p.add_argument("--out", default=None, help="output directory (default runs/replicate-<recipe>[-quick])")
    p.set_defaults(func=run_replicate)

    p = sub.add_parser("export", help="write a training checkpoint as an HF directory")
    p.add_argument("checkpoint", help="a training checkpoint (run/step-XXXXXX) or a run dir (its latest)")
    p.add_argument("--out", required=True, help="output HF directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (or dir) to store with the model")
    p.add_argument("--dtype", default=None, help="stored dtype: float32 or bfloat16 (default: as trained)")
    p.set_defaults(func=run_export)


def run_train(args) -> int:
    import json

    from olmo2.config import pad_vocab
    from olmo2.data.loader import Loader
    from olmo2.fsio import atomic_file
    from olmo2.recipes import apply_overrides, get_recipe
    from olmo2.train import parallel
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
        out = Path(args.out)
        if parallel.rank() == 0:
            resolved = recipe.to_dict()
            if args.data:
                resolved["data"] = {"dirs": list(args.data)}
            resolved["overrides"] = list(args.overrides)
            with atomic_file(out / "recipe.json") as f:
                json.dump(resolved, f, indent=2)
        res = train(recipe.model, t, loader, out)
        parallel.print0(f"done: step {res.step}, {res.tokens:,} tokens; last checkpoint {res.last_checkpoint}")
    finally:
        parallel.cleanup_distributed()
    return 0


def run_soup(args) -> int:
    from olmo2.train.soup import normalise_weights, soup
    w = normalise_weights(len(args.checkpoints), args.weights)
    out = soup(args.checkpoints, args.out, weights=w)
    print(f"wrote {out}: average of {len(args.checkpoints)} checkpoints with weights "
          f"{', '.join(f'{x:.4g}' for x in w)}")
    return 0


def run_replicate(args) -> int:
    from olmo2.replicate import print_result, replicate
    print_result(replicate(args.recipe, args.out, quick=args.quick))
    return 0


def run_export(args) -> int:
    from olmo2.train.state import export_hf, latest_checkpoint
    ck = Path(args.checkpoint)
    if not (ck / "train_state.json").exists():
        latest = latest_checkpoint(ck)
        if latest is None:
            raise Olmo2Error(f"{ck}: not a training checkpoint and holds none (expected step-XXXXXX/ with "
                             f"train_state.json)")
        ck = latest
    tok = None
    if args.tokenizer:
        from olmo2.tokenizer import Tokenizer
        tok = Tokenizer.from_pretrained(args.tokenizer)
    out = export_hf(ck, args.out, tokenizer=tok, dtype=args.dtype)
    print(f"wrote {out} from {ck}")
    return 0
