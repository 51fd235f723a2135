"""`olmo2 trace ...`: find the training documents behind a model's output (local OLMoTrace).

    olmo2 trace index tok/demo --out runs/trace-demo          # suffix arrays, per shard
    olmo2 trace query --index runs/trace-demo --text "..."    # or --file F, --json
    olmo2 generate --model DIR --prompt P --trace runs/trace-demo

`index` is resumable (finished shards are skipped) and splits over a job array with
--num-parts/--part-index; all parts may write into one INDEX. `query` prints the output
with traced spans highlighted and, per span, up to 10 documents (source, shard, offset,
licence, context). Heavy imports (numpy, tokenizers) happen inside the run functions so
`olmo2 --help` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from olmo2.errors import Olmo2Error


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `trace` command group (`index`, `query`) to the top-level CLI."""
    tr = subparsers.add_parser("trace", help="trace output text back to training documents",
                               description=__doc__.split("\n\n")[0])
    sub = tr.add_subparsers(dest="trace_cmd", metavar="VERB", required=True)

    p = sub.add_parser("index", help="build a suffix-array index over token shards",
                       description="Index the shards of `olmo2 data tokenize` output dirs.")
    p.add_argument("data_dirs", nargs="+", metavar="DATA_DIR",
                   help="directories written by `olmo2 data tokenize`")
    p.add_argument("--out", required=True, help="index directory (created or resumed)")
    p.add_argument("--num-parts", type=int, default=1,
                   help="split the shards into this many parts (cluster job array)")
    p.add_argument("--part-index", type=int, default=0, help="which part this run indexes")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_index)

    q = sub.add_parser("query", help="trace a text against an index",
                       description="Highlight the spans of a text found verbatim in the "
                                   "indexed corpus and list their documents.")
    q.add_argument("--index", required=True, help="directory written by `olmo2 trace index`")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to trace ('-' reads stdin)")
    src.add_argument("--file", help="a UTF-8 file with the text to trace")
    q.add_argument("--max-count", type=int, default=10,
                   help="keep spans occurring at most this many times in the corpus")
    q.add_argument("--max-docs", type=int, default=10, help="documents shown per span")
    q.add_argument("--context", type=int, default=250, help="context tokens each side")
    q.add_argument("--json", action="store_true", help="print JSON instead of the terminal view")
    q.add_argument("--verify", action="store_true",
                   help="check whole-file sha256 of every shard (slow) instead of fingerprints")
    q.set_defaults(func=run_query)
    return tr


def trace_and_print(index_path: str, text: str, *, max_count: int = 10, max_docs: int = 10,
                    context: int = 250, as_json: bool = False, stream=None,
                    verify: bool = False) -> None:
    """Trace `text` against `index_path` and print the view (also used by `generate --trace`)."""
    for name, v in (("max-count", max_count), ("max-docs", max_docs)):
        if v < 1:
            raise Olmo2Error(f"--{name} must be >= 1, got {v}")
    if context < 0:
        raise Olmo2Error(f"--context must be >= 0, got {context}")
    from olmo2.trace.rank import trace_text
    from olmo2.trace.render import render_json, render_terminal
    from olmo2.trace.store import open_index

    stream = stream or sys.stdout
    index = open_index(index_path, full_check=verify)
    res = trace_text(index, text, max_count=max_count, max_docs=max_docs, context=context)
    if as_json:
        stream.write(render_json(res) + "\n")
    else:
        color = hasattr(stream, "isatty") and stream.isatty()
        stream.write(render_terminal(res, color=color) + "\n")
    stream.flush()


def run_index(args) -> int:
    """`olmo2 trace index`."""
    from olmo2.outdir import check_out
    from olmo2.trace.index import build_index

    check_out(args.out, "trace", inputs=args.data_dirs)
    build_index(args.data_dirs, args.out, num_parts=args.num_parts, part_index=args.part_index,
                progress=not args.quiet)
    return 0


def run_query(args) -> int:
    """`olmo2 trace query`."""
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise Olmo2Error(f"{args.file}: cannot read a UTF-8 text file ({e})") from e
    else:
        text = sys.stdin.read() if args.text == "-" else args.text
    trace_and_print(args.index, text, max_count=args.max_count, max_docs=args.max_docs,
                    context=args.context, as_json=args.json, verify=args.verify)
    return 0
