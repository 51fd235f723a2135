"""Per-token log-probs of the next tokens, chunked over the vocabulary (DPO, GRPO).

    h = model(ids, head=False)                                        # [B, T, D]
    logps, mask = token_logps(h, lm_head.weight, labels, chunk_tokens=512)
    seq = sequence_logps(logps, mask, average=True)                   # [B] (dpo_norm: per-token mean)

`labels` are UNSHIFTED like the loop's LM labels (labels[:, t] = ids[:, t] or -100): column
t of the result is log p(labels[:, t+1] | ids[:, :t+1]) and mask[:, t] says whether that
target counts (the last column never does). Masked positions hold 0.

Why chunked: DPO and GRPO need log p of the *taken* token only, but a plain
`log_softmax(logits).gather(...)` materialises the fp32 [B·T, V] logits and their
log-softmax (and autograd keeps one for backward): with the 100k vocabulary, 2 × 2048-token
DPO sequences that is 2 × 1.6 GB. `_ChunkedTokenLogps` applies the LM head `chunk` rows at
a time, keeps only one logsumexp per token, and in backward recomputes each chunk's logits
to form d/dlogits = g·(onehot − softmax) and turn it into the hidden-state and head-weight
gradients at once (the same scheme as olmo2/train/loss.py's chunked CE). Peak memory holds
a few [chunk, V] tensors. Equal to the unchunked `reference_token_logps` to rounding
(tests/test_dpo.py).

Footgun: call it inside the autocast the model ran under: it reads the autocast dtype to
pick the matmul dtype (as F.linear would); the log-softmax itself is always ≥ fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from olmo2.train.loss import IGNORE_INDEX


class _ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(h @ w.T)[target] per row of h [N, D], `chunk` rows at a time."""

    @staticmethod
    def forward(ctx, h, w, target, chunk, acc):
        tgt = target[:, None]
        out = torch.empty(h.shape[0], dtype=acc, device=h.device)
        lse = torch.empty(h.shape[0], dtype=acc, device=h.device)
        for s in range(0, h.shape[0], chunk):
            e = s + chunk
            logits = (h[s:e] @ w.T).to(acc)
            lse[s:e] = torch.logsumexp(logits, dim=-1)
            out[s:e] = logits.gather(1, tgt[s:e]).squeeze(1) - lse[s:e]
            del logits
        ctx.save_for_backward(h, w, tgt, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, g):
        h, w, tgt, lse = ctx.saved_tensors
        chunk = ctx.chunk
        g = g.to(lse.dtype)
        gh = torch.empty_like(h)
        # fp32 (or fp64) accumulator for the head's gradient (bf16 would round per chunk)
        gw = torch.zeros(w.shape, dtype=lse.dtype, device=w.device)
        for s in range(0, h.shape[0], chunk):
            e = s + chunk
            # d logp[target] / d logits = onehot(target) − softmax; times the incoming g
            grad = (h[s:e] @ w.T).to(lse.dtype)
            grad.sub_(lse[s:e, None]).exp_().mul_(-g[s:e, None])
            grad.scatter_add_(1, tgt[s:e], g[s:e, None])
            grad = grad.to(h.dtype)
            torch.mm(grad, w, out=gh[s:e])
            gw.add_(grad.T @ h[s:e])
        return gh, gw.to(w.dtype), None, None, None


def shifted_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels [B, T] → (next-token targets [B, T] with ignored ones set to 0, mask [B, T])."""
    tgt = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    mask = tgt != IGNORE_INDEX
    return tgt.clamp(min=0), mask


def token_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                chunk_tokens: int | None = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs [B, T], mask [B, T]) of each next token from the final hidden states
    [B, T, D] and the LM head weight [V, D]; None chunk_tokens = one chunk (all rows)."""
    B, T, D = hidden.shape
    dev = hidden.device.type
    mm = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
    acc = torch.promote_types(mm, torch.float32)
    tgt, mask = shifted_targets(labels)
    chunk = max(int(chunk_tokens or B * T), 1)
    with torch.autocast(dev, enabled=False):
        out = _ChunkedTokenLogps.apply(hidden.reshape(-1, D).to(mm), weight.to(mm), tgt.reshape(-1), chunk, acc)
    out = out.view(B, T)
    return out * mask.to(out.dtype), mask


def reference_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unchunked form, from full logits [B, T, V] (tests, and the check of the above)."""
    tgt, mask = shifted_targets(labels)
    lp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    out = lp.gather(2, tgt[..., None]).squeeze(2)
    return out * mask.to(out.dtype), mask


def sequence_logps(logps: torch.Tensor, mask: torch.Tensor, average: bool) -> torch.Tensor:
    """Σ (or, average=True, mean) of each row's counted token log-probs: [B]."""
    total = (logps * mask.to(logps.dtype)).sum(-1)
    if not average:
        return total
    return total / mask.sum(-1).clamp(min=1).to(total.dtype)


def model_token_logps(model, ids: torch.Tensor, labels: torch.Tensor, chunk_tokens: int | None,
                      autocast=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` (plain or FSDP2-wrapped) on ids and return `token_logps` of labels."""
    import contextlib

    from olmo2.train import parallel
    with autocast if autocast is not None else contextlib.nullcontext():
        # Under FSDP2 the root module (which owns lm_head) stays unsharded after its
        # forward until backward, so its full weight can be used here (as the LM loss does).
        h = model(ids, head=False)
        return token_logps(h, parallel.unwrap(model).lm_head.weight, labels, chunk_tokens)
