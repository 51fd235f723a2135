"""The replication's validation text: passages from every demo source in proportion, split
into a dev set (for choosing the recipe's knobs) and a test set (what the report scores).

    from olmo2.eval.valset import build_valset, score_passages
    test = build_valset("val.jsonl", shares={"sotu": .36, ...}, split="test", budget_bytes=160_000)
    nll, nbytes = score_passages(model, tok, test, max_len=128)   # per passage: nats, bytes

Construction (deterministic, no RNG state):
1. every validation document is cut into passages of at most `max_chars` characters, at a
   paragraph break if there is one in the second half of the window, else at a space;
2. each passage goes to "dev" or "test" by sha256 of (doc id, passage number), so the two
   sets never share a passage (they may share a document: Shakespeare has one validation
   play, and a split by document would leave one set without Shakespeare);
3. per source, passages are taken in hash order until the source has its share of
   `budget_bytes`, the shares being the sources' byte shares of the training corpus.

Scoring follows `olmo2.eval.bpb` exactly (each passage after one EOS, sliding windows of
`max_len` with stride max_len/2), but all windows of all passages run in padded batches, so
a few hundred passages cost seconds instead of a forward call each. Right padding is safe
because attention is causal: no scored position sees a pad token.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from olmo2.errors import DataError

SPLITS = ("dev", "test")


@dataclass(frozen=True)
class Passage:
    source: str
    doc_id: str
    index: int
    text: str

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def _cut(text: str, max_chars: int) -> list[str]:
    out, i = [], 0
    while i < len(text):
        end = min(len(text), i + max_chars)
        if end < len(text):
            para = text.rfind("\n\n", i + max_chars // 2, end)
            space = text.rfind(" ", i + max_chars // 2, end)
            end = para + 2 if para > 0 else (space + 1 if space > 0 else end)
        piece = text[i:end].strip()
        if piece:
            out.append(piece)
        i = end
    return out


def _hash(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


def split_of_passage(doc_id: str, index: int) -> str:
    return SPLITS[_hash("valsplit", doc_id, index) % 2]


def build_valset(val_jsonl: str | Path, shares: dict[str, float], split: str, budget_bytes: int,
                 max_chars: int = 1000) -> list[Passage]:
    """Passages of `split` with each source's share of `budget_bytes` (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    by_source: dict[str, list[Passage]] = defaultdict(list)
    with open(val_jsonl, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            d = json.loads(line)
            src, doc_id = d.get("source", "all"), d.get("id", f"line{n}")
            for i, piece in enumerate(_cut(d.get("text", ""), max_chars)):
                if split_of_passage(doc_id, i) == split:
                    by_source[src].append(Passage(src, doc_id, i, piece))
    total = sum(shares.values())
    out: list[Passage] = []
    for src, share in sorted(shares.items()):
        pool = sorted(by_source.get(src, []), key=lambda p: _hash("valorder", p.doc_id, p.index))
        if not pool:
            raise DataError(f"{val_jsonl}: no {split} passages of source {src!r}; rebuild the demo corpus")
        want, got = budget_bytes * share / total, 0
        for p in pool:
            if got >= want:
                break
            out.append(p)
            got += p.n_bytes
    return out


def composition(passages: list[Passage]) -> dict[str, dict]:
    """Per source: passages, documents, bytes and byte share (for the report)."""
    total = sum(p.n_bytes for p in passages) or 1
    out: dict[str, dict] = {}
    for p in passages:
        c = out.setdefault(p.source, {"passages": 0, "docs": set(), "bytes": 0})
        c["passages"] += 1
        c["docs"].add(p.doc_id)
        c["bytes"] += p.n_bytes
    return {s: {"passages": c["passages"], "docs": len(c["docs"]), "bytes": c["bytes"],
                "share": c["bytes"] / total} for s, c in sorted(out.items())}


def _windows(n_tokens: int, max_len: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored) over seq = [context] + ids, as `bpb.token_logprobs` walks it."""
    stride = max(1, max_len // 2)
    out, scored, n = [], 1, n_tokens + 1
    while scored < n:
        end = min(n, max_len if scored == 1 else scored + stride)
        out.append((max(0, end - max_len), end, scored))
        scored = end
    return out


@torch.inference_mode()
def score_passages(model, tokenizer, passages: list[Passage], max_len: int, batch_size: int = 64):
    """(nll in nats, UTF-8 bytes) per passage, each scored after one EOS (module docstring)."""
    was_training = model.training
    model.eval()
    jobs = []  # (passage number, token window, first scored index within the window)
    for k, p in enumerate(passages):
        seq = [tokenizer.eos_id] + tokenizer.encode(p.text)
        for begin, end, scored in _windows(len(seq) - 1, max_len):
            jobs.append((k, seq[begin:end], scored - begin))
    nll = [0.0] * len(passages)
    jobs.sort(key=lambda j: len(j[1]))  # similar lengths together: less padding
    try:
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i:i + batch_size]
            width = max(len(w) for _, w, _ in chunk)
            ids = torch.full((len(chunk), width), tokenizer.eos_id, dtype=torch.long)
            for r, (_, w, _) in enumerate(chunk):
                ids[r, :len(w)] = torch.tensor(w)
            logp = F.log_softmax(model(ids).float(), dim=-1)
            for r, (k, w, first) in enumerate(chunk):
                tgt = torch.tensor(w[first:])
                rows = torch.arange(first - 1, len(w) - 1)
                nll[k] -= float(logp[r, rows, tgt].sum())
    finally:
        model.train(was_training)
    return nll, [p.n_bytes for p in passages]


def bits_per_byte(nll: list[float], n_bytes: list[int]) -> float:
    """Total NLL / ln 2 / total bytes."""
    return sum(nll) / math.log(2) / max(sum(n_bytes), 1)
