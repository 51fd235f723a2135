"""LoRA: low-rank adapters on the attention and MLP projections, base weights frozen.

    from olmo2.post.lora import LoRAConfig, apply_lora, merge_lora
    apply_lora(model, LoRAConfig(r=16, alpha=32))   # in place; only lora_A/lora_B train
    ... train ...
    merge_lora(model)                                # in place: plain nn.Linear weights again

Each targeted `nn.Linear` (q/k/v/o_proj, gate/up/down_proj by default) becomes a
`LoRALinear` that keeps the frozen `weight` under the same name and adds
`lora_A` [r, in] and `lora_B` [out, r]:

    y = x W^T + (alpha / r) · (x A^T) B^T

the parametrisation of LoRA (Hu et al. 2021) and of `peft`'s `LoraConfig(r, lora_alpha)`
(tests/test_lora.py compares outputs and gradients with peft). A is initialised like
peft's default (Kaiming-uniform, a = √5) and B to zero, so the adapted model starts
exactly equal to the base. State-dict names stay HF's for the base weights
(`model.layers.0.self_attn.q_proj.weight`) plus `...q_proj.lora_A` / `...q_proj.lora_B`,
so a training checkpoint (DCP) holds base and adapters, and resume works as for any run.

`model.adapter_config` (a dict) records the LoRA settings on the model; the training
checkpoint writer stores it in train_config.json ("lora"), and
`olmo2.train.state.load_model_from_checkpoint` re-applies it and merges, so `olmo2 export`
of a LoRA run writes a plain HF checkpoint (W + (alpha/r)·B A) that transformers loads.

Footguns: apply LoRA BEFORE building the optimizer (the loop builds it from the parameters
with requires_grad); every non-LoRA parameter (embeddings, norms, lm_head) is frozen too.
No dropout on the adapter input (peft's lora_dropout=0), which keeps the training step
deterministic and the merge exact.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from olmo2.errors import ConfigError

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoRAConfig:
    """Rank, scale and target projections of the adapters."""

    r: int
    """Adapter rank (--lora R)."""
    alpha: float | None = None
    """Scale numerator: the update is (alpha / r)·B A. None: alpha = 2r (the common LoRA choice)."""
    targets: tuple[str, ...] = TARGETS
    """Linear modules (by attribute name) that get adapters."""

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"--lora: rank must be an integer >= 1 (got {self.r!r})")
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ConfigError(f"--lora-alpha: must be a number > 0 (got {self.alpha!r})")
        bad = sorted(set(self.targets) - set(TARGETS))
        if bad or not self.targets:
            raise ConfigError(f"lora targets {bad or '()'}: choose from {', '.join(TARGETS)}")

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else 2 * self.r) / self.r

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoRAConfig":
        try:
            return cls(r=d["r"], alpha=d.get("alpha"), targets=tuple(d.get("targets", TARGETS)))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"lora config {d!r}: {e}") from None


class LoRALinear(nn.Module):
    """A bias-free Linear with a frozen `weight` and a trainable rank-r update."""

    def __init__(self, base: nn.Linear, r: int, scale: float):
        super().__init__()
        if base.bias is not None:  # OLMo 2 has no biases; refuse rather than silently drop one
            raise ConfigError("LoRA here supports bias-free Linear layers only")
        self.in_features, self.out_features, self.r, self.scale = base.in_features, base.out_features, r, scale
        self.weight = base.weight
        self.weight.requires_grad_(False)
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=dev, dtype=dt))
        if not self.lora_A.is_meta:
            # peft's default init of A (nn.Linear's): Kaiming-uniform with a = sqrt(5)
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # two thin matmuls instead of forming B A: r << d keeps this ~2r/d of the base cost
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def merged_weight(self) -> torch.Tensor:
        """W + scale · B A, computed in at least fp32 and cast back to W's dtype."""
        acc = torch.promote_types(self.weight.dtype, torch.float32)
        delta = self.lora_B.detach().to(acc) @ self.lora_A.detach().to(acc)
        return (self.weight.detach().to(acc) + self.scale * delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, scale={self.scale:g}"


def _targets(model: nn.Module, names: tuple[str, ...]):
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in names:
                yield parent, name, child


def apply_lora(model: nn.Module, cfg: LoRAConfig, seed: int | None = None) -> nn.Module:
    """Freeze every parameter of `model` and put adapters on cfg.targets (in place).

    `seed` makes the A init reproducible independent of the global RNG."""
    if getattr(model, "adapter_config", None):
        raise ConfigError("this model already has LoRA adapters")
    for p in model.parameters():
        p.requires_grad_(False)
    state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    n = 0
    try:
        for parent, name, child in _targets(model, cfg.targets):
            if not isinstance(child, nn.Linear):
                raise ConfigError(f"lora target {name} is a {type(child).__name__}, not a Linear")
            setattr(parent, name, LoRALinear(child, cfg.r, cfg.scale))
            n += 1
    finally:
        if seed is not None:
            torch.random.set_rng_state(state)
    if not n:
        raise ConfigError(f"lora: no module named {', '.join(cfg.targets)} in the model")
    model.adapter_config = cfg.to_dict()
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain bias-free nn.Linear holding W + scale·B A (in place);
    parameters are trainable again, as in a freshly loaded model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                w = child.merged_weight()
                lin = nn.Linear(child.in_features, child.out_features, bias=False, device=w.device, dtype=w.dtype)
                with torch.no_grad():
                    lin.weight.copy_(w)
                setattr(parent, name, lin)
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "adapter_config"):
        del model.adapter_config
    return model


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    """{'trainable': n, 'total': n} parameter counts (for the run's log line)."""
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "total": total}
