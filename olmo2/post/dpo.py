"""The DPO loss (`dpo_norm` / `dpo`) and the sequence log-probs of a batch of pairs.

    from olmo2.post.dpo import dpo_loss, pair_logps
    losses, r_c, r_r = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=5.0)          # per pair
    pi_c, pi_r = pair_logps(model, batch, average=True, chunk_tokens=512)   # one forward

The loop's objective plug-in (`DPOObjective`) and the `olmo2 dpo` run are in
olmo2/post/dpo_run.py.

The loss of one preference pair (chosen c, rejected r) is
    −log σ(β · [(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))])
where log π(y) is the log-prob of the response tokens (assistant tokens only). `dpo_norm`
(the OLMo 2 1B DPO, facts §5: open-instruct `--dpo_loss_type dpo_norm --beta 5`) uses the
AVERAGE per-token log-prob instead of the sum, so long responses are not favoured; plain
`dpo` uses the sum (Rafailov et al.). The implicit rewards β·(log π − log π_ref) of chosen
and rejected, their margin and the accuracy (chosen reward > rejected) are logged per step.

The reference log-probs are not computed here: they come precomputed in the batch
(`ref_chosen`, `ref_rejected`, from olmo2/post/refcache.py, computed once with the frozen
starting model as open-instruct's dpo_tune_cache does), so the reference model is never
in memory during training and its numbers cannot drift with the policy.

Batch keys (the loop slices each along dim 0): chosen_ids, chosen_labels, rejected_ids,
rejected_labels [B, T] (labels UNSHIFTED, -100 outside assistant tokens; chosen and rejected
padded to one T per batch), ref_chosen, ref_rejected [B] (fp64 sequence log-probs, reduced
the same way). Each micro-batch runs ONE forward over the chosen and rejected rows stacked,
and the log-probs are taken chunked over the vocabulary (olmo2/post/logps.py).

Normalisation: the loss is Σ over pairs / the pairs of the global batch, i.e. the mean over
the 128 pairs of the recipe whatever micro_batch_size and world size are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from olmo2.post.logps import model_token_logps, sequence_logps



def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair, chosen reward, rejected reward) from sequence log-probs [B] (summed for
    `dpo`, per-token means for `dpo_norm`: the caller reduces)."""
    chosen = pi_chosen - ref_chosen.to(pi_chosen.dtype)
    rejected = pi_rejected - ref_rejected.to(pi_rejected.dtype)
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return losses, beta * chosen.detach(), beta * rejected.detach()


def pair_logps(model: nn.Module, mb: dict, average: bool, chunk_tokens: int | None,
               autocast=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) sequence log-probs [B] of a (micro-)batch, in one forward."""
    n = mb["chosen_ids"].shape[0]
    ids = torch.cat([mb["chosen_ids"], mb["rejected_ids"]])
    labels = torch.cat([mb["chosen_labels"], mb["rejected_labels"]])
    logps, mask = model_token_logps(model, ids, labels, chunk_tokens, autocast)
    seq = sequence_logps(logps, mask, average)
    return seq[:n], seq[n:]


def run_dpo(*args, **kwargs):
    """`olmo2 dpo`'s Python entry point (defined in olmo2/post/dpo_run.py; see run_dpo there)."""
    from olmo2.post.dpo_run import run_dpo as run
    return run(*args, **kwargs)
