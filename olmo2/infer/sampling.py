"""Next-token selection: validation of sampling values, logit processors, and sampling.

    params = SamplingParams(temperature=0.8, top_p=0.95).validated()
    next_ids = sample_next(logits_fp32, params, seen=seen_mask, generator=g)   # [B]

Order is the one transformers uses: repetition penalty → temperature → top-k → top-p →
sample. `temperature == 0` means greedy (argmax after the repetition penalty; top-k/top-p
are then irrelevant and ignored).

The repetition penalty follows the CTRL/transformers rule (a seen token's logit is divided
by the penalty when positive, multiplied when negative). Which tokens count as seen is
kept as a `[B, vocab]` bool mask updated once per step (`mark_seen`), so the penalty costs
O(vocab) per step instead of a gather over the whole growing sequence. Unlike
transformers, left-padding tokens of a batch are not marked as seen.

Footguns: processors expect fp32 logits `[B, vocab]` (cast before calling: bf16 logits
make top-p cumulative sums coarse); `generator` must live on the logits' device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from olmo2.errors import GenerationError


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen; `validated()` raises GenerationError on bad values."""

    temperature: float = 1.0
    """Softmax temperature; 0 = greedy (argmax)."""
    top_k: int | None = None
    """Keep only the k most likely tokens (None = all)."""
    top_p: float | None = None
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches p (None or 1 = all)."""
    repetition_penalty: float | None = None
    """> 1 discourages tokens already in the prompt or output (None or 1 = off)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validated(self) -> "SamplingParams":
        """Self, after checking every value; raises GenerationError naming the field."""
        t = self.temperature
        if t is None or not isinstance(t, (int, float)) or math.isnan(t) or t < 0 or math.isinf(t):
            raise GenerationError(f"temperature must be a finite number >= 0 (got {t!r}); use 0 for greedy decoding")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            raise GenerationError(f"top_k must be an integer >= 1 (got {self.top_k!r}); omit it to keep all tokens")
        p = self.top_p
        if p is not None and (not isinstance(p, (int, float)) or math.isnan(p) or not 0 < p <= 1):
            raise GenerationError(f"top_p must be in (0, 1] (got {p!r}); omit it or use 1 to keep all tokens")
        r = self.repetition_penalty
        if r is not None and (not isinstance(r, (int, float)) or math.isnan(r) or math.isinf(r) or r <= 0):
            raise GenerationError(f"repetition_penalty must be a finite number > 0 (got {r!r}); 1 means no penalty")
        return self


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise logits [B, V] of tokens marked in the bool mask `seen` [B, V]."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf (ties at the k-th are kept)."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: drop the least likely tokens whose total probability is <= 1 - p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum <= (1 - p)
    drop_sorted[..., -1] = False  # the most likely token always survives
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Apply penalty → temperature → top-k → top-p to fp32 logits [B, V] (greedy: penalty only)."""
    if params.repetition_penalty not in (None, 1, 1.0) and seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
        # An extreme penalty (1e-45, 1e45) overflows to ±inf, and inf - inf is NaN in the
        # softmax below; clamping keeps the order, which is all the penalty means.
        big = torch.finfo(logits.dtype).max
        logits = logits.clamp(-big, big)
    if params.greedy:
        return logits
    if params.temperature != 1:
        scaled = logits / params.temperature
        # A tiny temperature (1e-45) overflows the maximum to +inf and the softmax to NaN.
        # Such rows are shifted by their max first (softmax-invariant), which sends the
        # others to -inf instead; finite rows keep the plain division transformers does.
        shifted = (logits - logits.amax(dim=-1, keepdim=True)) / params.temperature
        logits = torch.where(torch.isfinite(scaled).all(dim=-1, keepdim=True), scaled, shifted)
    if params.top_k is not None:
        logits = apply_top_k(logits, params.top_k)
    if params.top_p is not None and params.top_p < 1:
        logits = apply_top_p(logits, params.top_p)
    return logits


def sample_next(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids [B] from logits [B, V] (cast to fp32 here)."""
    scores = process_logits(logits.float(), params, seen)
    if params.greedy:
        return torch.argmax(scores, dim=-1)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def mark_seen(seen: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor | None = None) -> None:
    """Mark ids ([B] or [B, T]) as seen in the bool mask [B, V], in place; `valid` masks pads."""
    if ids.dim() == 1:
        ids = ids[:, None]
    if valid is None:
        seen.scatter_(1, ids, True)
        return
    # Send pads to an extra column that is dropped, so they never mark a real token.
    V = seen.shape[1]
    hits = torch.zeros(seen.shape[0], V + 1, dtype=torch.bool, device=seen.device)
    hits.scatter_(1, ids.masked_fill(~valid.to(torch.bool), V), True)
    seen |= hits[:, :V]
