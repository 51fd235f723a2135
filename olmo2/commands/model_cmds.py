"""Verbs about a checkpoint itself: `init`, `info`, `score`.

    olmo2 init --preset tiny --out runs/m --seed 3
    olmo2 info --model runs/m
    olmo2 score --model runs/m --text "Hello" --per-token

Heavy imports (torch, the model) happen inside the run functions so that building the
parser stays cheap.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from olmo2.config import PRESETS
from olmo2.commands import HelpFormatter
from olmo2.errors import Olmo2Error

# The dtype names the CLI offers (olmo2/checkpoint.py parse_dtype also takes the aliases);
# spelled here so --help needs no torch. Compute stays float32/bfloat16: fp16 overflows.
STORED_DTYPES = ("float32", "bfloat16", "float16")
COMPUTE_DTYPES = ("float32", "bfloat16")


def register(sub) -> None:
    """Add `init`, `info` and `score` to the top-level CLI."""
    p = sub.add_parser(
        "init", help="write a randomly initialised checkpoint (HF format) from a preset",
        formatter_class=HelpFormatter,
        description="Write a randomly initialised model from a preset shape as an HF directory "
                    "(config.json, model.safetensors, model card) that transformers and `olmo2` load. "
                    "For tests and benchmarks: the weights are random, its text is noise.",
        epilog="example:\n  olmo2 init --preset tiny --out runs/tiny-init --seed 1\n"
               "  olmo2 init --preset olmo2-1b --out runs/1b-init --dtype bfloat16 --tokenizer dolma2/")
    p.add_argument("--preset", required=True, choices=list(PRESETS), help="model shape")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--seed", type=int, default=0, help="init RNG seed")
    p.add_argument("--dtype", choices=STORED_DTYPES, default="float32", help="stored dtype")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (or dir) to store with the model")
    p.add_argument("--force", action="store_true", help="replace --out if it already holds a checkpoint")
    p.set_defaults(func=run_init)

    p = sub.add_parser(
        "info", help="config, parameter count and size per dtype of a checkpoint",
        formatter_class=HelpFormatter,
        description="Print a checkpoint's config, its parameter count and its size in each dtype, "
                    "reading only config.json and the safetensors headers (no weights are loaded).",
        epilog="example:\n  olmo2 info --model runs/replicate-tiny/soup\n"
               "  olmo2 info --model allenai/OLMo-2-0425-1B --json")
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_info)

    p = sub.add_parser(
        "score", help="per-token log-probs, total NLL and bits per byte of a text",
        formatter_class=HelpFormatter,
        description="Score a text under the model: total and mean negative log-likelihood, "
                    "perplexity and bits per UTF-8 byte (comparable across tokenizers); "
                    "--per-token lists every token with its log-prob.",
        epilog="example:\n  olmo2 score --model runs/replicate-tiny/soup --text 'The king said' --per-token\n"
               "  olmo2 score --model runs/replicate-tiny/soup --file notes.txt --json")
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", help="the text to score")
    g.add_argument("--file", help="a UTF-8 text file to score")
    p.add_argument("--per-token", action="store_true", help="also print every token and its log-prob")
    p.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32", help="compute dtype")
    p.add_argument("--quant", choices=("none", "bf16", "int8", "int4"), default="none",
                   help="weight precision: quantize on the fly at load (olmo2/quant); a checkpoint from `olmo2 quantize` loads as stored")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_score)


def run_init(args) -> int:
    import torch

    from olmo2.checkpoint import parse_dtype, save_model
    from olmo2.config import pad_vocab, preset
    from olmo2.memory import check_model_memory
    from olmo2.model import Olmo2
    from olmo2.outdir import check_out
    from olmo2.tokenizer import Tokenizer

    check_out(args.out, "hf", inputs=[args.tokenizer], force=args.force)
    cfg = preset(args.preset)
    tok = Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        # Small presets follow the tokenizer: embedding rows = its size padded to 128.
        cfg = cfg.replace(vocab_size=pad_vocab(tok.vocab_size), eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    if tok is not None:
        tok.check_fits(cfg.vocab_size, f"preset {args.preset}")
    check_model_memory(cfg, 4, f"preset {args.preset}")  # built in fp32, then cast when saved
    torch.manual_seed(args.seed)
    model = Olmo2(cfg)
    model.reset_parameters(torch.Generator().manual_seed(args.seed))
    out = save_model(model, args.out, tokenizer=tok, dtype=parse_dtype(args.dtype))
    print(f"wrote {out} ({args.preset}, {model.num_params():,} parameters, seed {args.seed})")
    return 0


def _sizes(n: int) -> dict[str, float]:
    # int8: one byte per weight + per-channel scales (small); int4 g128: half a byte + scales.
    return {"float32": n * 4, "bfloat16": n * 2, "int8": n * 1, "int4": n * 0.5}


def run_info(args) -> int:
    from olmo2.checkpoint import SafetensorsFile, _weight_files, resolve
    from olmo2.config import ModelConfig

    d = resolve(args.model)
    cfg = ModelConfig.from_json_file(d / "config.json")
    files = _weight_files(d)
    stored: dict[str, int] = {}
    n_stored = 0
    for f in files:
        st = SafetensorsFile(f)
        for name in st.keys():
            dtype, shape, begin, end = st.entries[name]
            stored[str(dtype).replace("torch.", "")] = stored.get(str(dtype).replace("torch.", ""), 0) + (end - begin)
            n_stored += shape.numel()
    info = {
        "path": str(d),
        "config": {k: v for k, v in cfg.__dict__.items()},
        "head_dim": cfg.head_dim,
        "parameters": cfg.num_params(),
        "parameters_non_embedding": cfg.num_params(include_embedding=False),
        "stored_parameters": n_stored,
        "stored_bytes_by_dtype": stored,
        "bytes_if": _sizes(cfg.num_params()),
        "files": [f.name for f in files],
        "tokenizer": (d / "tokenizer.json").exists(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{d}")
    for k, v in info["config"].items():
        print(f"  {k:<18} {v}")
    print(f"  {'head_dim':<18} {cfg.head_dim}")
    print(f"  parameters         {info['parameters']:,} ({info['parameters'] / 1e9:.3f} B); "
          f"non-embedding {info['parameters_non_embedding']:,}")
    for dt, b in stored.items():
        print(f"  stored as {dt:<9} {b / 1e9:.3f} GB in {len(files)} file(s)")
    print("  size as   " + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in info["bytes_if"].items()))
    print(f"  tokenizer          {'yes' if info['tokenizer'] else 'no (generate/chat/score need tokenizer.json in this directory)'}")
    return 0


def run_score(args) -> int:
    from olmo2.checkpoint import load_model
    from olmo2.eval.bpb import score_text
    from olmo2.tokenizer import Tokenizer

    from olmo2.textinput import arg_text, decode_utf8
    if args.file:
        text = decode_utf8(Path(args.file).read_bytes(), args.file)
    else:
        text = arg_text(args.text, "--text")
    if not text:
        raise Olmo2Error("nothing to score: the text is empty")
    model = load_model(args.model, dtype=args.dtype, quant=args.quant)
    tok = Tokenizer.from_pretrained(args.model)
    tok.check_fits(model.config.vocab_size, args.model)
    s = score_text(model, tok, text)
    summary = {"tokens": len(s.token_ids), "bytes": s.n_bytes, "nll": s.nll, "mean_nll": s.mean_nll,
               "perplexity": math.exp(s.mean_nll), "bits_per_byte": s.bits_per_byte}
    if args.json:
        if args.per_token:
            summary["per_token"] = [{"id": i, "token": tok.decode([i]), "logprob": lp}
                                    for i, lp in zip(s.token_ids, s.logprobs)]
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    if args.per_token:
        for i, lp in zip(s.token_ids, s.logprobs):
            print(f"{i:>7} {lp:>10.4f}  {tok.decode([i])!r}")
    print(f"tokens {summary['tokens']}  bytes {summary['bytes']}  NLL {summary['nll']:.4f} nats  "
          f"mean {summary['mean_nll']:.4f}  ppl {summary['perplexity']:.3f}  bits/byte {summary['bits_per_byte']:.4f}")
    sys.stdout.flush()
    return 0
