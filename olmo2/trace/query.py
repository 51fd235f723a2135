"""Span finding on the suffix arrays: longest matches, counts, occurrences, memorisation.

The core is `match(shard, q, starts, max_len)`: for many start positions of a query token
array at once, the longest prefix of `q[start:]` (at most `max_len` tokens, never past an EOS
in the query) that occurs in the shard, and the suffix-array range [lo, hi) of its
occurrences. It narrows one token at a time: the suffixes sharing a k-token prefix form a
contiguous SA range, and their (k+1)-th tokens are sorted inside it, so two binary searches
(vectorised over all starts with numpy) give the sub-range for the next token. The first
token's range comes free from the shard's cumulative unigram counts. Cost: about
2·log2(range) fancy-index reads of the memory-mapped SA and tokens per token of match,
shared by all starts, so a 200-token output costs milliseconds to a few hundred ms per shard.

Boundaries: a query never contains EOS (matching stops there), so a match cannot cross a
document end in the corpus (every document ends in EOS); each shard has its own array, so a
match cannot cross shards. Reading past the end of a shard is the "end of string", which
sorts first (key -1), the same order libdivsufsort uses.

`memorised_fraction(index, ids)` is the memorisation figure for reports: the share of the
tokens of a generation covered by a verbatim corpus span of >= 8 tokens;
`memorised_fractions(index_or_path, texts)` does it for a list of texts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from olmo2.trace.store import ShardIndex, TraceIndex


def _key(shard: ShardIndex, rows: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Token at offset k of the suffixes at SA rows `rows` (-1 past the end of the shard)."""
    pos = np.asarray(shard.sa[rows], dtype=np.int64) + k
    inside = pos < shard.n
    out = np.full(pos.shape, -1, dtype=np.int64)
    out[inside] = shard.tokens[pos[inside]]
    return out


def _bound(shard: ShardIndex, lo, hi, k, c, strict: bool) -> np.ndarray:
    """First row in [lo, hi) whose key at offset k is >= c (> c if strict), vectorised."""
    a, b = lo.copy(), hi.copy()
    while True:
        act = np.flatnonzero(a < b)
        if act.size == 0:
            return a
        mid = (a[act] + b[act]) // 2
        key = _key(shard, mid, k[act])
        right = key <= c[act] if strict else key < c[act]
        a[act[right]] = mid[right] + 1
        b[act[~right]] = mid[~right]


@dataclass
class Matches:
    """Per start: longest match length and its SA range [lo, hi) in one shard."""

    length: np.ndarray  # int64
    lo: np.ndarray      # int64
    hi: np.ndarray      # int64

    @property
    def count(self) -> np.ndarray:
        return self.hi - self.lo


def match(shard: ShardIndex, q: np.ndarray, starts: np.ndarray, max_len: np.ndarray | int,
          eos_id: int) -> Matches:
    """Longest prefix of q[s:s+max_len] in `shard` for every s in `starts` (see module doc)."""
    q = np.asarray(q, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    L, m = q.shape[0], starts.shape[0]
    cap = np.minimum(np.broadcast_to(np.asarray(max_len, dtype=np.int64), (m,)), L - starts)
    length = np.zeros(m, dtype=np.int64)
    lo = np.zeros(m, dtype=np.int64)
    hi = np.full(m, shard.n, dtype=np.int64)  # the empty prefix occurs everywhere
    if m == 0:
        return Matches(length, lo, hi)
    active = np.flatnonzero(cap > 0)
    k = 0
    while active.size:
        c = q[starts[active] + k]
        if k == 0:
            ok = (c != eos_id) & (c >= 0) & (c < shard.cum.shape[0] - 1)
            cc = np.clip(c, 0, shard.cum.shape[0] - 2)
            nlo, nhi = shard.cum[cc], shard.cum[cc + 1]
        else:
            ok = c != eos_id
            kk = np.full(active.shape, k, dtype=np.int64)
            nlo = _bound(shard, lo[active], hi[active], kk, c, strict=False)
            nhi = _bound(shard, nlo, hi[active], kk, c, strict=True)
        ok &= nlo < nhi
        grow = active[ok]
        lo[grow], hi[grow] = nlo[ok], nhi[ok]
        length[grow] = k + 1
        k += 1
        more = cap[grow] > k
        # Fast path: a prefix that occurs once can only extend along that one suffix, so
        # one array comparison replaces a pair of binary searches per further token
        # (a memorised 200-token output: ~200 search steps -> 1).
        single = more & (hi[grow] - lo[grow] == 1)
        for i in grow[single]:
            p, s = int(shard.sa[lo[i]]) + k, int(starts[i]) + k
            m = int(min(cap[i] - k, shard.n - p))
            if m > 0:
                b = q[s:s + m]
                stop = (shard.tokens[p:p + m] != b) | (b == eos_id)
                length[i] = k + (int(np.argmax(stop)) if stop.any() else m)
        active = grow[more & ~single]
    return Matches(length, lo, hi)


@dataclass
class SpanHits:
    """Longest matches over all shards: per start the length and the total count."""

    length: np.ndarray
    count: np.ndarray
    per_shard: list[Matches]


def longest(index: TraceIndex, q: np.ndarray, starts: np.ndarray,
            max_len: np.ndarray | int | None = None) -> SpanHits:
    """Longest match per start over the whole index, with its total occurrence count."""
    q = np.asarray(q, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    if max_len is None:
        max_len = q.shape[0]
    per = [match(s, q, starts, max_len, index.eos_id) for s in index.shards]
    length = np.max([p.length for p in per], axis=0) if per else np.zeros(len(starts), np.int64)
    count = np.zeros(len(starts), dtype=np.int64)
    for p in per:
        count += np.where((p.length == length) & (length > 0), p.count, 0)
    return SpanHits(length, count, per)


def count(index: TraceIndex, q: np.ndarray, start: int, end: int) -> int:
    """Occurrences of q[start:end] in the corpus (0 for an empty or absent span)."""
    if end <= start:
        return 0
    h = longest(index, q, np.array([start]), end - start)
    return int(h.count[0]) if h.length[0] == end - start else 0


def occurrences(index: TraceIndex, q: np.ndarray, start: int, end: int,
                limit: int = 1000) -> list[tuple[int, int]]:
    """(shard number, token offset) of up to `limit` occurrences of q[start:end], sorted."""
    if end <= start:
        return []
    h = longest(index, q, np.array([start]), end - start)
    if h.length[0] != end - start:
        return []
    out = []
    for i, (s, p) in enumerate(zip(index.shards, h.per_shard)):
        if p.length[0] == end - start:
            take = min(int(p.count[0]), limit - len(out))
            out += [(i, int(x)) for x in np.sort(s.sa[p.lo[0]:p.lo[0] + take])]
        if len(out) >= limit:
            break
    return out


def memorised_fraction(index: TraceIndex, ids, min_len: int = 8) -> float:
    """Share of the tokens of `ids` covered by a verbatim corpus span of >= `min_len` tokens.

    Every position is a candidate start (not only word starts): a token counts as memorised
    when some window of at least `min_len` tokens around it occurs verbatim in the corpus.
    Returns 0.0 for an empty generation.
    """
    q = np.asarray(ids, dtype=np.int64)
    L = q.shape[0]
    if L == 0:
        return 0.0
    h = longest(index, q, np.arange(L))
    covered = np.zeros(L + 1, dtype=np.int64)
    for s in np.flatnonzero(h.length >= min_len):
        covered[s] += 1
        covered[s + h.length[s]] -= 1
    return float(np.count_nonzero(np.cumsum(covered)[:L])) / L


def memorised_fractions(index: TraceIndex | str, texts: list[str], min_len: int = 8) -> list[float]:
    """`memorised_fraction` of each text (tokenized with the index's tokenizer); for reports.

    `index` may be an opened `TraceIndex` or the path of one.
    """
    if not isinstance(index, TraceIndex):
        from olmo2.trace.store import open_index
        index = open_index(index)
    tok = index.tokenizer
    return [memorised_fraction(index, tok.encode(t, add_special_tokens=False).ids, min_len)
            for t in texts]
