"""Training objectives: what the one loop (olmo2/train/loop.py) minimises, as a plug-in.

    from olmo2.train.objective import LMObjective, Objective
    train(model_cfg, train_cfg, data, out, objective=MyObjective())   # default: LMObjective()

The loop owns everything that is the same for every stage (micro-batching, gradient
accumulation and sync, world-size scaling, clipping, NaN skips, the schedule, checkpoints,
resume, logging). An objective owns only the per-micro-batch maths and its normaliser:

    objective.normaliser(batch)                    -> Tensor (scalar, this rank's rows)
    objective.micro_batch(model, mb, cfg, autocast) -> (loss_sum: Tensor, metrics: dict)
    objective.row_tokens(batch)                    -> int   (tokens per row, for the schedule)
    objective.bind(model)                          (optional: called once, see below)

Per optimizer step the loop computes N = Σ_ranks normaliser(batch) (all-reduced, clamped
to ≥ 1), then for each micro-batch `mb` backpropagates loss_sum / N. So the step's
gradient is ∇(Σ_micro Σ_ranks loss_sum) / N: an objective that returns SUMS over its units
(tokens, sequences, pairs) and counts the same units in `normaliser` gets a gradient that
does not depend on micro_batch_size or world size. (A "mean per micro-batch" reduction,
as open-instruct's `reduce_loss=mean`, is loss_sum = that mean and normaliser = the number
of micro-batches: see olmo2/post/sft.py.)

Batches are dicts of tensors whose dim 0 is the row (this rank's `global_batch_size /
world_size` rows). The loop moves every tensor to the device and slices EVERY tensor
along dim 0 into micro-batches (`mb[k] = batch[k][i*m:(i+1)*m]`); non-tensor values are
passed to each micro-batch unchanged. So an objective may read any keys it likes:
`input_ids`, `labels` (LM), `position_ids` + `doc_ids` (packing), `chosen_*`/`rejected_*`,
`ref_logps`, `advantages`, `old_logps`, `loss_mask`, ...

Metrics: `metrics` maps a name to either a scalar tensor `s` (logged as Σ s / N, i.e.
normalised like the loss) or a pair `(s, c)` of scalar tensors (logged as Σ s / Σ c over
micro-batches and ranks: per-sequence rewards, accuracies). Values must be detached.
The key "loss" is what the loop reports as the step's loss (`TrainState.loss`,
`TrainResult.losses`, the progress line); "z_loss" is reported as `TrainState.z_loss`.
Every key goes to metrics.jsonl; a non-finite one skips the step like a NaN loss.

`bind(model)`: an objective (or a data source) that needs the live training model — a
frozen reference model computed from it, GRPO rollouts sampled from it — defines `bind`;
the loop calls `objective.bind(model)` and `data.bind(model)` once, after the model is
built, sharded and restored and before the first batch is drawn. Frozen parts (a
reference model, LoRA base weights) are just parameters with requires_grad=False or
modules outside the trained model: the optimizer only sees trainable parameters.

Footgun: objectives must run the model inside `autocast` (the loop passes the bf16
autocast context on GPU without FSDP, a null context otherwise), and call the model as
`model(...)` (not `unwrap(model)`), so FSDP2's hooks gather and reshard parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from olmo2.errors import DataError
from olmo2.train import parallel
from olmo2.train.loss import IGNORE_INDEX, chunked_lm_loss_sums, lm_loss_sums

Metrics = dict[str, "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


class Objective:
    """Base class (the protocol with defaults); see the module docstring."""

    name = "objective"

    def normaliser(self, batch: dict) -> torch.Tensor:
        """This rank's count of the units loss sums are taken over (the loop all-reduces it)."""
        raise NotImplementedError

    def micro_batch(self, model: nn.Module, mb: dict, cfg, autocast) -> tuple[torch.Tensor, Metrics]:
        """(loss_sum, metrics) of one micro-batch; loss_sum carries the graph."""
        raise NotImplementedError

    def row_tokens(self, batch: dict) -> int:
        """Tokens per row, for the token-counted schedule: input_ids' length by default."""
        if "input_ids" not in batch:
            raise DataError(f"{self.name}: batch has no input_ids; the objective must define row_tokens()")
        return int(batch["input_ids"].shape[1])

    def check_batch(self, batch: dict, local_rows: int) -> None:
        """Refuse a batch whose tensors do not all have `local_rows` rows."""
        for k, v in batch.items():
            if isinstance(v, torch.Tensor) and (v.dim() == 0 or v.shape[0] != local_rows):
                raise DataError(f"batch[{k!r}] has shape {tuple(v.shape)}: every tensor needs {local_rows} rows "
                                f"on dim 0 (global_batch_size / world_size)")


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] document ids → boolean attention mask [B, 1, T, T]: causal AND same document.

    With per-document `position_ids` this makes a packed row compute exactly what each
    document computes alone (no attention across documents, RoPE restarting at 0)."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (same & causal)[:, None]


def micro_batch_loss(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, cfg, autocast,
                     positions: torch.Tensor | None = None,
                     attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ CE, Σ z) of one micro-batch: chunked from the hidden states (cfg.loss_chunk_tokens)
    or from the full logits."""
    with autocast:
        if cfg.loss_chunk_tokens:
            # Under FSDP2 the root module (which owns lm_head) stays unsharded after its
            # forward until backward, so its full weight can be used here.
            h = model(ids, positions=positions, attn_mask=attn_mask, head=False)
            return chunked_lm_loss_sums(h, parallel.unwrap(model).lm_head.weight, labels, cfg.z_loss_coeff,
                                        cfg.loss_chunk_tokens)
        logits = model(ids, positions=positions, attn_mask=attn_mask)
    return lm_loss_sums(logits, labels, cfg.z_loss_coeff)


class LMObjective(Objective):
    """Next-token CE + z-loss over non-ignored targets, normalised by the global target count.

    Batch keys: input_ids, labels (UNSHIFTED, -100 = ignored); optional position_ids [B, T]
    and doc_ids [B, T] for packed rows (document-masked attention, see `document_mask`).
    This is the pretraining loss unchanged (tests/test_train_loop.py, test_resume.py)."""

    name = "lm"

    def normaliser(self, batch: dict) -> torch.Tensor:
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum().to(torch.float64)

    def check_batch(self, batch: dict, local_rows: int) -> None:
        if "input_ids" not in batch or "labels" not in batch:
            raise DataError(f"the LM objective needs batch keys input_ids and labels (got {sorted(batch)})")
        ids, labels = batch["input_ids"], batch["labels"]
        if ids.dim() != 2 or labels.shape != ids.shape:
            raise DataError(f"batch input_ids {tuple(ids.shape)} / labels {tuple(labels.shape)}: expected "
                            f"[{local_rows}, T] each")
        super().check_batch(batch, local_rows)

    def micro_batch(self, model: nn.Module, mb: dict, cfg, autocast) -> tuple[torch.Tensor, Metrics]:
        doc = mb.get("doc_ids")
        mask = document_mask(doc) if doc is not None else None
        ce, z = micro_batch_loss(model, mb["input_ids"], mb["labels"], cfg, autocast,
                                 positions=mb.get("position_ids"), attn_mask=mask)
        loss = ce + cfg.z_loss_coeff * z
        # fp64 before scaling, as the loop always logged it
        return loss, {"loss": ce.detach(), "z_loss": z.detach().double() * cfg.z_loss_coeff}
