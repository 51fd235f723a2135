"""Trace model output back to the training documents: a local OLMoTrace over olmo2's shards.

    index.py   `olmo2 trace index`: a suffix array per token shard (+ unigram counts, doc labels)
    store.py   opening an index at query time: memory maps, manifest checks, one-line errors
    query.py   span finding: longest matches by binary search on the suffix arrays, counts,
               occurrences; the memorisation figure (`memorised_fraction`)
    rank.py    span selection (maximal, <= K occurrences, most distinctive) and BM25 ranking
    render.py  terminal view (highlighted spans) and JSON

Python: `from olmo2.trace import open_index, trace_text, memorised_fractions`
(`memorised_fractions(INDEX, texts)`: per text, the share of tokens inside a verbatim
training span of >= 8 tokens — the memorisation figure for the replicate report).
"""
from __future__ import annotations

from olmo2.trace.query import memorised_fraction, memorised_fractions
from olmo2.trace.rank import trace_text
from olmo2.trace.store import open_index

__all__ = ["open_index", "trace_text", "memorised_fraction", "memorised_fractions"]
