"""AdamW with OLMo 2's parameter groups.

Two groups: everything (weights AND norm weights: decay_norm_and_bias=true) with weight
decay, and the input embedding `model.embed_tokens.weight` without (decay_embeddings=false).
The LM head is a Linear and is decayed.

Build the optimizer AFTER `parallelize` (FSDP2 swaps parameters for sharded DTensors, so
the optimizer must hold those). The embedding is found by name with wrapper prefixes
(`_checkpoint_wrapped_module.`, `_orig_mod.`, `module.`) stripped.
"""
from __future__ import annotations

import torch
from torch import nn

from olmo2.errors import ConfigError

_WRAPPER_PARTS = ("_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module")


def clean_name(name: str) -> str:
    """A parameter name without activation-checkpoint/compile/DDP wrapper components."""
    parts = [p for p in name.split(".") if p not in _WRAPPER_PARTS]
    if parts and parts[0] == "module":  # DDP
        parts = parts[1:]
    return ".".join(parts)


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """[{params: decayed, weight_decay: wd}, {params: embeddings, weight_decay: 0}] (empty groups dropped)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not decay_embeddings and clean_name(name) == "model.embed_tokens.weight":
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def adamw_kernel(cfg, device: torch.device) -> dict:
    """AdamW's implementation keywords: fused on CUDA when cfg.fused_adamw, else the
    per-parameter loop; fused_adamw on any other device is a ConfigError (no silent fallback:
    a GPU run that expects the fused kernel should not quietly get the slow one)."""
    if cfg.fused_adamw:
        if device.type != "cuda":
            raise ConfigError(f"train.fused_adamw=true needs the parameters on CUDA (they are on {device.type}); "
                              f"set train.fused_adamw=false on this machine")
        return {"fused": True}
    # foreach=False: the per-parameter kernel is the same code path on every world size and
    # with DTensor params, which keeps the 1-rank vs 2-rank and resume comparisons exact.
    return {"foreach": False}


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW(betas, eps, wd) over OLMo 2's groups; the LR is set by the loop every step."""
    device = next(model.parameters()).device  # a DTensor reports its local shard's device
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.decay_embeddings),
                             lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **adamw_kernel(cfg, device))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
