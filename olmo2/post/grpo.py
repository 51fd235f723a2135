"""GRPO (RLVR) maths: group advantages, the PPO-clip policy loss, the k3 KL.

    from olmo2.post.grpo import group_advantages, grpo_token_loss
    adv = group_advantages(rewards, group_size=16)          # (r − mean)/(std + 1e-8) per prompt
    loss, parts = grpo_token_loss(new, old, ref, adv_per_token, mask, clip=0.2, beta=0.01)

As the OLMo 2 1B RLVR ran it (open-instruct's GRPO script; facts §5):
- advantages: the G completions of one prompt form a group; A = (r − mean_g)/(std_g + 1e-8),
  one scalar per completion, given to each of its tokens. `std` is the Bessel-corrected one
  (torch's default, which the torch-tensor GRPO script used; grpo_fast's numpy std is the
  population one: `unbiased=False`). A group whose completions all scored the same gets
  A = 0: it teaches nothing, as in GRPO.
- policy loss per response token: max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) with ρ = exp(log π − log
  π_old), ε = 0.2 (PPO-clip; π_old are the log-probs of the policy that sampled).
- KL to the frozen reference per token, the k3 estimator (Schulman's "approximating KL"):
  k3 = exp(log π_ref − log π) − 1 − (log π_ref − log π), ≥ 0, unbiased for KL(π‖π_ref);
  added as β·k3 with β = 0.01.
- the loss is the token-masked MEAN of (policy loss + β·k3) over every response token of
  the global batch (Σ here, the loop divides by the normaliser = response tokens).
  (open-instruct averages within each micro-batch and then over micro-batches; the global
  token mean does not depend on micro_batch_size.)

The loop's objective (`GRPOObjective`) and the rollouts that feed it are in
olmo2/post/rlvr.py; the [B, T] inputs here are aligned with the shifted next-token targets
as olmo2/post/logps.py returns them.
"""
from __future__ import annotations

import torch

from olmo2.errors import DataError

def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-8,
                     unbiased: bool = True) -> torch.Tensor:
    """(r − group mean) / (group std + eps) for rewards [P·G] laid out prompt by prompt."""
    r = rewards.to(torch.float64)
    if r.numel() % group_size:
        raise DataError(f"{r.numel()} rewards are not whole groups of {group_size}")
    g = r.view(-1, group_size)
    mean = g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True, unbiased=unbiased) if group_size > 1 else torch.zeros_like(mean)
    return ((g - mean) / (std + eps)).reshape(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π‖π_ref): exp(ref − logp) − 1 − (ref − logp)."""
    d = ref_logp - logp
    return torch.exp(d) - 1 - d


def grpo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, adv: torch.Tensor,
                    mask: torch.Tensor, clip: float, beta: float) -> tuple[torch.Tensor, dict]:
    """(Σ over masked tokens of clipped policy loss + β·k3, detached parts) for [B, T] inputs;
    `adv` is [B] (one advantage per completion) or [B, T]."""
    if adv.dim() == 1:
        adv = adv[:, None]
    adv = adv.to(logp.dtype)
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp.to(logp.dtype))
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    pg = torch.maximum(pg1, pg2)
    kl = k3_kl(logp, ref_logp.to(logp.dtype))
    total = ((pg + beta * kl) * m).sum()
    parts = {"pg_loss": (pg.detach() * m).sum(), "kl": (kl.detach() * m).sum(),
             "clip_frac": ((pg2 > pg1).to(m.dtype) * m).sum().detach(), "tokens": m.sum()}
    return total, parts
