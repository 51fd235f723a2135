"""A KV cache whose first keys are shared by every row, and attention that reads them once.

Few-shot evaluation (and any batch of prompts with one system prompt) runs G rows on top of
the same P-token prefix. A plain cache would hold G copies of the prefix keys and, at each
decode step, every layer would read all of them: G·P·D per head where P·D suffices. For an
8-shot GSM8K prompt (P ≈ 700–900 tokens) that re-read, and the concatenation that builds it,
was a third of a decode step of a 130M model (profiled: `aten::cat` 20%, SDPA 15%).

`PrefixCache` keeps
  - shared segments: tensors [1, Hkv, L, D] per layer, the same for every row (the prefix);
  - per-row segments: [G', Hkv, L, D] plus a LongTensor picking each row's entry (e.g. the
    per-context keys that every choice of that context sees when scoring log-likelihoods);
  - a writable tail [G, Hkv, tail_len, D] per layer for the tokens run through it.

`attend` computes attention as one softmax over [shared keys | row keys], but the shared
part's scores come from a single matmul with the G·T queries folded into its M dimension
(the shared keys read once per layer, never expanded or copied), and the row part from a
batched matmul over the gathered row keys. The softmax runs in fp32 over the concatenated
scores, so the result is the same attention (up to rounding order) as SDPA over the
concatenated keys. Masks use the same key layout: shared keys first, then row keys, then
the tail. The model calls `attend` instead of `update` + SDPA when the cache has one
(olmo2/model.py); `update` is kept for callers that want the concatenated keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SCORE_ELEMENTS = 1 << 26  # fp32 scores per block of rows (256 MiB): bounds the transient memory
# Queries per row up to which `attend` uses the shared-prefix path. Decode steps (T = 1) and
# short choice chunks gain; a long chunk (a prefill of several hundred suffix tokens) is
# better served by SDPA's fused kernel than by materialised [T, keys] scores (MMLU, whose
# contexts share only a short prefix, ran 1.3x slower with explicit scores everywhere).
CASCADE_MAX_T = 16


class PrefixCache:
    """Shared segments + per-row segments + a writable tail; see the module docstring."""

    def __init__(self, segments, rows: int, tail_len: int, like: torch.Tensor, n_layers: int):
        # segments: list of (k_layers, v_layers, rows) with rows None (shared, batch-1 tensors)
        # or a LongTensor; the shared ones must come first (the mask's key order).
        kinds = [seg[2] is None for seg in segments]
        if kinds != sorted(kinds, reverse=True):
            raise ValueError("PrefixCache: shared segments must precede per-row segments")
        self.segments = segments
        self.base = sum(seg[0][0].shape[2] for seg in segments)
        H, D = like.shape[1], like.shape[3]
        self.k = [torch.empty(rows, H, tail_len, D, dtype=like.dtype, device=like.device) for _ in range(n_layers)]
        self.v = [torch.empty_like(t) for t in self.k]
        self.rows = rows
        self.length = self.base

    def keep_rows(self, idx: torch.Tensor) -> None:
        """Drop finished rows (their values are untouched): the tail and per-row picks shrink."""
        self.k = [k.index_select(0, idx) for k in self.k]
        self.v = [v.index_select(0, idx) for v in self.v]
        self.segments = [s if s[2] is None else (s[0], s[1], s[2].index_select(0, idx)) for s in self.segments]
        self.rows = int(idx.numel())

    def _write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> int:
        off = start - self.base
        end = off + k.shape[2]
        self.k[layer][:, :, off:end] = k
        self.v[layer][:, :, off:end] = v
        return end

    def _shared(self, layer: int, which: int) -> torch.Tensor | None:
        parts = [seg[which][layer] for seg in self.segments if seg[2] is None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else torch.cat(parts, 2)

    def _per_row(self, layer: int, which: int, end: int) -> torch.Tensor:
        tail = (self.k if which == 0 else self.v)[layer][:, :, :end]
        parts = [seg[which][layer].index_select(0, seg[2]) for seg in self.segments if seg[2] is not None]
        return torch.cat(parts + [tail], 2) if parts else tail

    def update(self, layer_idx: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """The plain-cache interface: all keys/values concatenated, [rows, Hkv, length, D]."""
        end = self._write(layer_idx, start, k, v)
        shared_k, shared_v = self._shared(layer_idx, 0), self._shared(layer_idx, 1)
        rk, rv = self._per_row(layer_idx, 0, end), self._per_row(layer_idx, 1, end)
        if shared_k is None:
            return rk, rv
        G = rk.shape[0]
        return (torch.cat([shared_k.expand(G, -1, -1, -1), rk], 2),
                torch.cat([shared_v.expand(G, -1, -1, -1), rv], 2))

    def attend(self, layer_idx: int, start: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: torch.Tensor | None, scale: float) -> torch.Tensor:
        """Attention output [G, H, T, D] for queries q [G, H, T, D] after writing k/v at `start`.

        attn_mask: bool [G or 1, 1, T, keys] (True = may attend) over [shared | per-row | tail];
        None only for one new token, which sees every key."""
        G, H, T, D = q.shape
        if attn_mask is None and T > 1:
            raise ValueError("PrefixCache.attend: a chunk of several tokens needs an explicit mask")
        if T > CASCADE_MAX_T or not any(seg[2] is None for seg in self.segments):
            kk, vv = self.update(layer_idx, start, k, v)
            return F.scaled_dot_product_attention(q, kk, vv, attn_mask=attn_mask, scale=scale,
                                                  enable_gqa=kk.shape[1] != H)
        end = self._write(layer_idx, start, k, v)
        sk, sv = self._shared(layer_idx, 0), self._shared(layer_idx, 1)
        rk, rv = self._per_row(layer_idx, 0, end), self._per_row(layer_idx, 1, end)
        keys = (sk.shape[2] if sk is not None else 0) + rk.shape[2]
        step = max(1, SCORE_ELEMENTS // max(1, H * T * keys))  # rows per block of scores
        if step >= G:
            return _attend_block(q, sk, sv, rk, rv, attn_mask, scale)
        outs = []
        for g in range(0, G, step):
            m = None if attn_mask is None else (attn_mask if attn_mask.shape[0] == 1 else attn_mask[g:g + step])
            outs.append(_attend_block(q[g:g + step], sk, sv, rk[g:g + step], rv[g:g + step], m, scale))
        return torch.cat(outs, 0)


def _attend_block(q, sk, sv, rk, rv, mask, scale: float) -> torch.Tensor:
    G, H, T, D = q.shape
    Hkv = rk.shape[1]
    rep = H // Hkv  # grouped-query attention: query head h reads kv head h // rep
    # Row keys: a batched matmul per (row, kv head), that kv head's rep·T queries as M.
    qr = q.reshape(G, Hkv, rep * T, D)
    scores_r = torch.matmul(qr, rk.transpose(-1, -2))  # [G, Hkv, rep·T, R]
    if sk is not None:
        P = sk.shape[2]
        # Shared keys: one matmul per kv head with all rows' queries folded into M, so the
        # prefix keys are read once for the whole batch.
        qs = qr.transpose(0, 1).reshape(Hkv, G * rep * T, D)
        scores_s = torch.matmul(qs, sk[0].transpose(-1, -2)).view(Hkv, G, rep * T, P).transpose(0, 1)
        scores = torch.cat([scores_s, scores_r], -1)
    else:
        P = 0
        scores = scores_r
    scores = scores.float().mul_(scale).view(G, H, T, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, -1).to(q.dtype).view(G, Hkv, rep * T, -1)
    out = torch.matmul(probs[..., P:], rv)  # [G, Hkv, rep·T, D]
    if sk is not None:
        ps = probs[..., :P].transpose(0, 1).reshape(Hkv, G * rep * T, P)
        out = out + torch.matmul(ps, sv[0]).view(Hkv, G, rep * T, D).transpose(0, 1)
    return out.reshape(G, H, T, D)
