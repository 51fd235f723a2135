"""The language-model loss: Σ cross-entropy and Σ z-loss (logsumexp²) over next-token targets.

    ce, z = lm_loss_sums(model(ids), labels, z_coeff)                      # from logits
    ce, z = chunked_lm_loss_sums(model(ids, head=False), lm_head.weight,   # from hidden
                                 labels, z_coeff, chunk_tokens=1024)       # states

Labels are UNSHIFTED (labels[:, t] is the token at t, or IGNORE_INDEX); both functions
shift them (the last position gets IGNORE_INDEX) instead of slicing the logits. Both return
sums, not means: the loop divides by the global target count. The math is at least fp32.

Why two: `lm_loss_sums` takes the [N, V] logits, upcasts them to fp32 and keeps an fp32
log-softmax for backward — with the 100k vocabulary and the 1B micro-batch (4 × 4096
tokens) that is ~6.6 GB, plus the same again for the gradient. `chunked_lm_loss_sums`
applies the LM head itself, `chunk_tokens` rows at a time, and saves only the hidden
states and one logsumexp per token; backward recomputes each chunk's logits (one more
[chunk, D] × [D, V] matmul per chunk) and turns them into the gradients of the hidden
states and the head weight right away. Peak memory holds a few [chunk, V] tensors
instead of [N, V] ones. The two agree to rounding (tests/test_loss.py); the chunked one
sums in a different order, so it is not bitwise equal.

Both share the hand-written gradient: d/dlogits of (g_ce·CE + g_z·z) per row is
softmax·(g_ce + 2·g_z·lse) − g_ce·onehot(target), one dense tensor instead of autograd's
two (NLL and the lse column) plus their sum.

Footgun: `chunked_lm_loss_sums` must run under the same autocast as the model's forward
would have applied to the head (the loop calls it inside its autocast block): it reads the
autocast dtype to decide the matmul dtype, as F.linear would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class _LMLoss(torch.autograd.Function):
    """Σ CE and Σ lse² over kept rows of `flat` [N, V] (logits), with a hand-written backward."""

    @staticmethod
    def forward(ctx, flat, target, keep):
        logp = torch.log_softmax(flat, dim=-1)
        tgt = target.clamp(min=0)[:, None]
        keepf = keep.to(flat.dtype)
        # log_softmax(x)_j = x_j − lse(x) for any column j: lse for the price of a column.
        lse = flat[:, 0] - logp[:, 0]
        ce = -(logp.gather(1, tgt).squeeze(1) * keepf).sum()
        z = (lse * lse * keepf).sum()
        ctx.save_for_backward(logp, tgt, keepf, lse)
        return ce, z

    @staticmethod
    def backward(ctx, g_ce, g_z):
        logp, tgt, keepf, lse = ctx.saved_tensors
        grad = logp.exp()
        grad.mul_((keepf * (g_ce + 2 * g_z * lse))[:, None])
        grad.scatter_add_(1, tgt, (-keepf * g_ce)[:, None])
        return grad, None, None


def _shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """labels [B, T] → flat next-token targets [B·T], the last position of each row ignored."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)


def lm_loss_sums(logits: torch.Tensor, labels: torch.Tensor, z_coeff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ CE, Σ logsumexp²) over non-ignored next-token targets from logits [B, T, V]."""
    # at least fp32 (bf16 logits are upcast; an fp64 model stays fp64 for exactness tests)
    flat = logits.to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, logits.shape[-1])
    target = _shifted_targets(labels)
    ce, z = _LMLoss.apply(flat, target, target != IGNORE_INDEX)
    return ce, (z if z_coeff else z.detach() * 0)


KEEP_PROBS_BYTES = 256 << 20  # save the softmax for backward when all chunks' probs fit in this


class _Scratch:
    """Per-call scratch tensors of the chunked loss, reused from chunk to chunk. A fresh
    [chunk, V] tensor each chunk costs its page faults every time (the allocator hands
    multi-MB blocks back to the OS on free): at the tiny demo's 512 × 8192 fp32, allocating
    took ~4-6 ms against ~1.6 ms for the multiply into a reused buffer (2 cores, Intel).
    A shorter last chunk uses a view of the buffer's first rows."""

    def __init__(self):
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        b = self._bufs.get(name)
        if (b is None or b.dtype != dtype or b.device != device or b.shape[1:] != shape[1:]
                or b.shape[0] < shape[0]):
            b = self._bufs[name] = torch.empty(shape, dtype=dtype, device=device)
        return b[:shape[0]]

    def mm(self, a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
        """a @ b in a's dtype, returned in `acc` (a second buffer when the two differ)."""
        shape = torch.Size((a.shape[0], b.shape[1]))
        out = torch.mm(a, b, out=self.get("mm", shape, a.dtype, a.device))
        return out if out.dtype == acc else self.get("mm_acc", shape, acc, a.device).copy_(out)


class _ChunkedLMLoss(torch.autograd.Function):
    """Σ CE and Σ lse² of the logits h @ w.T, computed `chunk` rows at a time (forward and
    backward), never holding all N × V logits at once. h [N, D] and w [V, D] are already in
    the matmul dtype; `acc` is the loss dtype (≥ fp32).

    Each chunk's softmax p comes from one fused softmax (half the time of log_softmax on
    CPU), and lse = x_k − log p_k at the row's argmax k (p_k ≥ 1/V, so the log is safe).
    When all the probabilities fit in KEEP_PROBS_BYTES (small vocabularies, e.g. the tiny
    demo: 2048 × 8192 fp32 = 64 MiB) they are kept for backward, which then needs neither
    the logits matmul again nor another exp pass; otherwise (the 1B's 100k vocabulary)
    backward recomputes each chunk's logits from h and w as before."""

    @staticmethod
    def forward(ctx, h, w, target, keep, chunk, acc):
        tgt = target.clamp(min=0)[:, None]
        keepf = keep.to(acc)
        lse = torch.empty(h.shape[0], dtype=acc, device=h.device)
        ce = torch.zeros((), dtype=acc, device=h.device)
        z = torch.zeros((), dtype=acc, device=h.device)
        keep_probs = h.shape[0] * w.shape[0] * torch.finfo(acc).bits // 8 <= KEEP_PROBS_BYTES
        probs = []
        scratch = _Scratch()
        for s in range(0, h.shape[0], chunk):
            e = s + chunk
            logits = scratch.mm(h[s:e], w.T, acc)
            p = torch.softmax(logits, dim=-1)
            top, k = logits.max(dim=-1, keepdim=True)
            lse_c = (top - p.gather(1, k).log()).squeeze(1)
            lse[s:e] = lse_c
            # CE = lse − x_target
            ce += ((lse_c - logits.gather(1, tgt[s:e]).squeeze(1)) * keepf[s:e]).sum()
            z += (lse_c * lse_c * keepf[s:e]).sum()
            if keep_probs:
                probs.append(p)
        ctx.save_for_backward(h, w, tgt, keepf, lse)
        ctx.chunk, ctx.probs = chunk, probs
        return ce, z

    @staticmethod
    def backward(ctx, g_ce, g_z):
        h, w, tgt, keepf, lse = ctx.saved_tensors
        chunk, probs = ctx.chunk, ctx.probs
        gh = torch.empty_like(h)
        # fp32 (or fp64) accumulator for the head's gradient: with bf16 matmuls, summing
        # the per-chunk products in bf16 would round once per chunk
        gw = torch.zeros(w.shape, dtype=lse.dtype, device=w.device)
        scratch = _Scratch()
        for i, s in enumerate(range(0, h.shape[0], chunk)):
            e = s + chunk
            coef = (keepf[s:e] * (g_ce + 2 * g_z * lse[s:e]))[:, None]
            if probs:  # out of place: the saved probs stay intact (backward may run twice)
                grad = torch.mul(probs[i], coef, out=scratch.get("grad", probs[i].shape, lse.dtype, h.device))
            else:  # softmax = exp(logits − lse) from the recomputed logits and the saved lse
                grad = scratch.mm(h[s:e], w.T, lse.dtype)
                grad.sub_(lse[s:e, None]).exp_().mul_(coef)
            grad.scatter_add_(1, tgt[s:e], (-keepf[s:e] * g_ce)[:, None])
            if grad.dtype != h.dtype:
                grad = scratch.get("grad_mm", grad.shape, h.dtype, h.device).copy_(grad)
            torch.mm(grad, w, out=gh[s:e])
            if gw.dtype == h.dtype:
                gw.addmm_(grad.T, h[s:e])
            else:
                gw.add_(grad.T @ h[s:e])
        return gh, gw.to(w.dtype), None, None, None, None


def chunked_lm_loss_sums(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, z_coeff: float,
                         chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ CE, Σ logsumexp²) like `lm_loss_sums(hidden @ weight.T, ...)`, from the final hidden
    states [B, T, D] and the LM head weight [V, D], `chunk_tokens` tokens at a time."""
    dev = hidden.device.type
    # the matmul dtype F.linear would use: the autocast dtype if autocast is on, else h's
    mm = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
    acc = torch.promote_types(mm, torch.float32)
    flat = hidden.reshape(-1, hidden.shape[-1])
    target = _shifted_targets(labels)
    with torch.autocast(dev, enabled=False):
        ce, z = _ChunkedLMLoss.apply(flat.to(mm), weight.to(mm), target, target != IGNORE_INDEX,
                                     max(int(chunk_tokens), 1), acc)
    return ce, (z if z_coeff else z.detach() * 0)
