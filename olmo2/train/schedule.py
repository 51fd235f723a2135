"""Learning-rate schedules counted in tokens.

Each schedule is a small frozen dataclass with `lr(tokens_seen) -> float`. The loop asks
for the LR of step n with tokens_seen = n × tokens_per_step (the tokens *including* the
step being taken), as the OLMo trainer does; so the 1B's last stage-1 step
(1,907,359 × 2,097,152 tokens) gets 7.4487e-5, the stage-2 starting LR (facts §3, §4).

    CosWithWarmup     linear warmup, then cosine from peak to alpha_f×peak at t_max
    LinearWithWarmup  linear warmup, then linear from peak to alpha_f×peak at t_max
                      (the anneal: peak = stage-1 final LR, warmup 0, alpha_f 0)
    Constant          linear warmup, then peak

Past t_max the LR stays at alpha_f×peak (the 1B stage 2 runs its last ~10 steps at 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class _Warmup:
    peak: float
    warmup_tokens: int = 0
    warmup_start_frac: float = 0.0

    def _warm(self, t: float) -> float | None:
        """The warmup LR while t < warmup_tokens, else None."""
        if t < self.warmup_tokens:
            start = self.peak * self.warmup_start_frac
            return start + (self.peak - start) * t / self.warmup_tokens
        return None


@dataclass(frozen=True)
class Constant(_Warmup):
    def lr(self, tokens_seen: float) -> float:
        w = self._warm(tokens_seen)
        return self.peak if w is None else w


@dataclass(frozen=True)
class _Decay(_Warmup):
    """Warmup, then `shape(frac)` from peak (1) to alpha_f×peak (0) as frac goes 0 → 1."""
    t_max_tokens: int = 1
    alpha_f: float = 0.1

    def shape(self, frac: float) -> float:
        raise NotImplementedError

    def lr(self, tokens_seen: float) -> float:
        w = self._warm(tokens_seen)
        if w is not None:
            return w
        eta_min = self.alpha_f * self.peak
        frac = min(1.0, (tokens_seen - self.warmup_tokens) / (self.t_max_tokens - self.warmup_tokens))
        return eta_min + (self.peak - eta_min) * self.shape(frac)


@dataclass(frozen=True)
class CosWithWarmup(_Decay):
    def shape(self, frac: float) -> float:
        return (1 + math.cos(math.pi * frac)) / 2


@dataclass(frozen=True)
class LinearWithWarmup(_Decay):
    alpha_f: float = 0.0

    def shape(self, frac: float) -> float:
        return 1.0 - frac


def build_schedule(cfg) -> Constant | CosWithWarmup | LinearWithWarmup:
    """The schedule a TrainConfig describes."""
    common = dict(peak=cfg.lr, warmup_tokens=cfg.warmup_tokens, warmup_start_frac=cfg.warmup_start_frac)
    if cfg.schedule == "constant":
        return Constant(**common)
    cls = CosWithWarmup if cfg.schedule == "cosine" else LinearWithWarmup
    return cls(**common, t_max_tokens=cfg.t_max_tokens, alpha_f=cfg.alpha_f)
