"""Show a `TraceResult`: a terminal view with spans highlighted, or JSON.

Terminal view: the output text with every traced span highlighted (ANSI reverse video on a
terminal, `[[...]]` otherwise), then per span its count and unigram log-probability and its
documents (BM25 order) with source, shard, token offset, licence and a context snippet
(up to `snippet_chars` characters each side; `--json` carries the full +-250-token context).
"""
from __future__ import annotations

import json
import re

from olmo2.trace.rank import TraceResult

_ON, _OFF = "\x1b[7m", "\x1b[0m"


def _mark(text: str, ranges: list[tuple[int, int]], color: bool) -> str:
    """`text` with the union of char `ranges` highlighted."""
    on, off = (_ON, _OFF) if color else ("[[", "]]")
    flags = [False] * len(text)
    for a, b in ranges:
        for i in range(max(0, a), min(len(text), b)):
            flags[i] = True
    out, inside = [], False
    for ch, f in zip(text, flags):
        if f != inside:
            out.append(on if f else off)
            inside = f
        out.append(ch)
    if inside:
        out.append(off)
    return "".join(out)


def _one_line(s: str) -> str:
    return re.sub(r"\s+", " ", s)


def render_terminal(res: TraceResult, color: bool = False, snippet_chars: int = 160) -> str:
    """Human-readable trace of one output."""
    lines = [_mark(res.text, [(s.char_start, s.char_end) for s in res.spans], color), ""]
    if not res.spans:
        lines.append(f"no span of the output ({res.num_tokens} tokens) was traced to the "
                     f"corpus ({res.corpus_tokens:,} tokens)")
        return "\n".join(lines)
    lines.append(f"{len(res.spans)} spans traced ({res.num_tokens} output tokens, corpus "
                 f"{res.corpus_tokens:,} tokens)")
    on, off = (_ON, _OFF) if color else ("[[", "]]")
    for k, sp in enumerate(res.spans, 1):
        lines.append(f"\n#{k} tokens {sp.start}-{sp.end} {_one_line(sp.text).strip()!r}: "
                     f"{sp.count} occurrence{'s' if sp.count != 1 else ''}, "
                     f"unigram logp {sp.logprob:.1f}")
        for d in sp.docs:
            lines.append(f"  - {d.source} | licence {d.license} | shard {d.shard} offset "
                         f"{d.offset:,} | doc {d.doc_id} | bm25 {d.score:.2f}")
            before = _one_line(d.before)[-snippet_chars:]
            after = _one_line(d.after)[:snippet_chars]
            lines.append(f"    ...{before}{on}{_one_line(d.match)}{off}{after}...")
    return "\n".join(lines)


def render_json(res: TraceResult) -> str:
    """The result as indented JSON (all fields, full contexts)."""
    return json.dumps(res.to_dict(), indent=1, ensure_ascii=False)
