"""From an output text to traced spans and their documents (the OLMoTrace selection).

`trace_text(index, text)`:
1. tokenize with the index's own tokenizer (its shards were made with it);
2. at every word start, the longest span that occurs in the corpus (`query.longest`),
   trimmed back so it also ends at a word end and not on a whitespace-only token (spans
   are whole words, as in OLMoTrace);
3. keep maximal spans (drop a span contained in another) that occur at most K times
   (default 10) — nesting never changes which spans pass, since a span occurs at least as
   often as any span containing it;
4. keep the ceil(0.05·L) most distinctive (lowest unigram log-probability under the corpus
   unigram counts, L = output tokens), reported in output order;
5. for each span, its occurrences -> documents with +-250 tokens of context (clipped to the
   document, EOS excluded); all retrieved contexts are ranked by BM25 (`rank_bm25.BM25Plus`,
   lowercased word tokens) against the whole output, and each span keeps its 10 best.
   BM25+ rather than Okapi: Okapi's idf turns negative for a term in over half the documents,
   which with the handful of contexts of one trace is most terms (scores came out < 0).

A word start is a token whose first character begins a word: position 0, or the character
before it and its first character are not both alphanumeric (byte-level BPE puts the space
inside the next token, so " the" starts a word). A token that only continues a multi-byte
character (same char offset as the previous token) never starts a word.

BM25 scores the context windows, not whole documents: a demo document can be a whole book,
and the window is what the user reads.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from olmo2.trace import query
from olmo2.trace.store import TraceIndex

DEFAULT_MAX_COUNT = 10
DEFAULT_DOCS = 10
DEFAULT_CONTEXT = 250
SPAN_FRACTION = 0.05
_WORD = re.compile(r"\w+")


@dataclass
class TraceDoc:
    """One corpus occurrence of a span, with where it lives and its context."""

    shard: str           # <data dir name>/<shard name>: shards of two dirs share names
    shard_path: str
    offset: int          # token offset of the span inside the shard
    doc_index: int       # document number inside the shard
    doc_id: str
    source: str
    license: str
    score: float         # BM25 of the context against the whole output
    before: str
    match: str
    after: str


@dataclass
class TraceSpan:
    """A traced span of the output: token range, char range, corpus statistics, documents."""

    start: int           # token index in the output (inclusive)
    end: int             # token index (exclusive)
    char_start: int
    char_end: int
    text: str
    count: int           # occurrences in the corpus
    logprob: float       # unigram log-probability (natural log) of the span
    docs: list[TraceDoc] = field(default_factory=list)


@dataclass
class TraceResult:
    """All traced spans of one output text."""

    text: str
    num_tokens: int
    corpus_tokens: int
    spans: list[TraceSpan]

    def to_dict(self) -> dict:
        return asdict(self)


def word_starts(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Boolean per token: does it begin a word (see module doc)."""
    out = np.zeros(len(offsets), dtype=bool)
    prev_char_start = -1
    for i, (a, _) in enumerate(offsets):
        if i == 0:
            out[i] = True
        elif a != prev_char_start and a < len(text):
            before = text[a - 1] if a > 0 else " "
            out[i] = not (before.isalnum() and text[a].isalnum())
        prev_char_start = a
    return out


def end_ok(text: str, offsets: list[tuple[int, int]], starts_mask: np.ndarray) -> np.ndarray:
    """Boolean per end position 0..L: a span [s, e) may end there (word end, no trailing
    whitespace-only token)."""
    ok = np.append(starts_mask, True)
    for e in range(1, len(offsets) + 1):
        a, b = offsets[e - 1]
        if ok[e] and not text[a:b].strip():
            ok[e] = False
    ok[0] = False
    return ok


def candidate_spans(index: TraceIndex, ids: np.ndarray, starts_mask: np.ndarray,
                    max_count: int, ends_mask: np.ndarray | None = None
                    ) -> list[tuple[int, int, int]]:
    """(start, end, count) of maximal word-aligned spans occurring 1..max_count times."""
    L = ids.shape[0]
    starts = np.flatnonzero(starts_mask)
    if L == 0 or starts.size == 0:
        return []
    h = query.longest(index, ids, starts)
    ends = starts + h.length
    # Trim each span back to a word end (the token after it starts a word, or output end).
    bound = np.append(starts_mask, True) if ends_mask is None else ends_mask
    trimmed = ends.copy()
    for i in range(len(starts)):
        while trimmed[i] > starts[i] and not bound[trimmed[i]]:
            trimmed[i] -= 1
    counts = h.count.copy()
    redo = np.flatnonzero((trimmed != ends) & (trimmed > starts))
    if redo.size:  # a trimmed span is a prefix of a match: one capped search counts them all
        counts[redo] = query.longest(index, ids, starts[redo], trimmed[redo] - starts[redo]).count
    spans = [(int(s), int(e), int(c)) for s, e, c in zip(starts, trimmed, counts) if e > s]
    # Maximal: drop spans inside another (starts are unique and sorted, so a span is nested
    # iff an earlier-starting span ends at or after its end).
    kept, reach = [], -1
    for s, e, c in spans:
        if e > reach:
            kept.append((s, e, c))
            reach = e
    return [sp for sp in kept if 1 <= sp[2] <= max_count]


def span_logprob(index: TraceIndex, ids: np.ndarray, start: int, end: int) -> float:
    """Sum of log(count(t) / N) over the span's tokens (unigram distinctiveness)."""
    n = max(1, index.total_tokens)
    c = index.unigram[np.asarray(ids[start:end], dtype=np.int64)].astype(np.float64)
    return float(np.sum(np.log(np.maximum(c, 1.0) / n)))


def _decode(tok, ids) -> str:
    return tok.decode([int(x) for x in ids], skip_special_tokens=False)


def _docs_for(index: TraceIndex, ids: np.ndarray, s: int, e: int, context: int,
              limit: int) -> list[tuple[TraceDoc, str]]:
    """Occurrences of ids[s:e] as TraceDocs (score 0) with the text to rank them on."""
    tok = index.tokenizer
    out = []
    for shard_i, pos in query.occurrences(index, ids, s, e, limit=limit):
        sh = index.shards[shard_i]
        d = sh.doc_of(pos)
        d0, d1 = int(sh.doc_starts[d]), int(sh.doc_starts[d + 1]) - 1  # d1: the doc's EOS
        a, b = max(d0, pos - context), min(d1, pos + (e - s) + context)
        before = _decode(tok, sh.tokens[a:pos])
        match = _decode(tok, sh.tokens[pos:pos + (e - s)])
        after = _decode(tok, sh.tokens[pos + (e - s):b])
        src, doc_id, lic = sh.doc_info(d)
        label = f"{os.path.basename(os.path.dirname(sh.path))}/{sh.name}"
        out.append((TraceDoc(label, sh.path, pos, d, doc_id, src, lic, 0.0, before, match, after),
                    before + match + after))
    return out


def _bm25(contexts: list[str], output: str) -> list[float]:
    from rank_bm25 import BM25Plus

    docs = [_WORD.findall(c.lower()) or [""] for c in contexts]
    q = _WORD.findall(output.lower())
    if not docs or not q:
        return [0.0] * len(docs)
    return [float(x) for x in BM25Plus(docs).get_scores(q)]


def trace_text(index: TraceIndex, text: str, *, max_count: int = DEFAULT_MAX_COUNT,
               max_docs: int = DEFAULT_DOCS, context: int = DEFAULT_CONTEXT,
               fraction: float = SPAN_FRACTION) -> TraceResult:
    """Trace `text` against the index (see the module doc for the steps)."""
    enc = index.tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, dtype=np.int64)
    L = int(ids.shape[0])
    starts = word_starts(text, enc.offsets)
    cands = candidate_spans(index, ids, starts, max_count, end_ok(text, enc.offsets, starts))
    n_keep = math.ceil(fraction * L)
    scored = sorted(((span_logprob(index, ids, s, e), s, e, c) for s, e, c in cands))[:n_keep]
    spans: list[TraceSpan] = []
    pending: list[tuple[TraceSpan, list[tuple[TraceDoc, str]]]] = []
    for lp, s, e, c in sorted(scored, key=lambda t: t[1]):
        a, b = enc.offsets[s][0], enc.offsets[e - 1][1]
        sp = TraceSpan(s, e, a, b, text[a:b], c, lp)
        pending.append((sp, _docs_for(index, ids, s, e, context, limit=max(max_count, max_docs))))
        spans.append(sp)
    flat = [pair for _, docs in pending for pair in docs]
    scores = _bm25([ctx for _, ctx in flat], text)
    i = 0
    for sp, docs in pending:
        for d, _ in docs:
            d.score = scores[i]
            i += 1
        ranked = sorted((d for d, _ in docs), key=lambda d: (-d.score, d.shard, d.offset))
        sp.docs = ranked[:max_docs]
    return TraceResult(text, L, index.total_tokens, spans)
