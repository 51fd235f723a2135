"""Build the model to train without ever holding all of it on one rank: meta → shard → init.

    model = build_model(model_cfg, train_cfg, mesh, device)   # what olmo2.train.loop does

1. `Olmo2(cfg)` is built under `torch.device("meta")`: shapes only, no memory.
2. `parallel.parallelize` applies AC/compile/FSDP2 to the meta model and materialises it
   with `to_empty` on the training device, so each rank allocates only its own shards
   (about 1/world of the parameters) — not the full fp32 model (~55 GB for 13B).
3. `init_weights` writes OLMo 2's init into those shards, and rebuilds the RoPE tables
   (buffers after `to_empty` are uninitialised memory).

Why the weights equal eager init (`Olmo2(cfg).reset_parameters(Generator().manual_seed(seed))`)
bit for bit, on any world size: `init_weights` replays the eager init exactly — one CPU
generator seeded with `seed`, modules in the same `modules()` order, each weight drawn at
its FULL shape into a CPU scratch tensor — and keeps only this rank's slice of it
(`distribute_tensor(..., src_data_rank=None)`: the same torch.chunk split as FSDP2's
`Shard(0)`, cut locally, no communication). DTensor's own random ops would not do: they
draw a different stream per shard, so the weights would depend on the world size.

Footguns:
- Every rank draws every full parameter (the same CPU work as eager init, ~1–2 min for
  13B), but holds only one full parameter at a time (the largest, the 13B embedding, is
  ~2 GB in fp32).
- The generator is on the CPU on purpose: a CUDA generator draws different numbers.
"""
from __future__ import annotations

import torch
from torch import nn

from olmo2.config import ModelConfig
from olmo2.train import parallel


def build_model(model_cfg: ModelConfig, cfg, mesh, device: torch.device) -> nn.Module:
    """Olmo2 built on the meta device, parallelised per `cfg`, materialised on `device` and
    initialised from `cfg.seed`; returns the (possibly wrapped) model to train."""
    from olmo2.model import Olmo2
    with torch.device("meta"):
        model = Olmo2(model_cfg)
    model = parallel.parallelize(model, cfg, mesh, device)
    init_weights(parallel.unwrap(model), cfg.seed)
    return model


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    """OLMo 2 init of a materialised Olmo2 whose parameters may be FSDP2 shards (DTensors) or
    live on any device; equal to eager `reset_parameters` with the same seed (module docstring)."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if not model.has_init(m):
            continue
        p = m.weight
        if isinstance(p, DTensor):
            full = torch.empty(p.shape, dtype=p.dtype)
            model.init_weight_(m, full, gen)
            mine = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
            p.to_local().copy_(mine)
        elif p.device.type != "cpu":
            full = torch.empty(p.shape, dtype=p.dtype)
            model.init_weight_(m, full, gen)
            p.copy_(full)
        else:
            model.init_weight_(m, p, gen)
    model.model.rotary.reset_tables()
