"""Distributed setup and model parallelisation, applied from outside the model.

    torchrun --nproc-per-node 8 -m olmo2 train ...      # RANK/WORLD_SIZE/LOCAL_RANK set
    python -m olmo2 train ...                           # single process: no init at all

`init_distributed()` reads the torchrun environment and picks `nccl` on CUDA, `gloo`
otherwise. `parallelize(model, cfg, mesh)` applies, per block and in this order (as
torchtitan does): activation checkpointing → torch.compile → FSDP2 `fully_shard`, then
`fully_shard` on the root; or DDP; or nothing.

Footguns:
- FSDP2 and DDP *average* gradients over ranks. The loop wants sums (each rank divides its
  local loss by the GLOBAL token count), so it multiplies the loss by `grad_scale(...)`.
- Build the optimizer after `parallelize` (FSDP2 replaces parameters with DTensors).
- With DDP, attributes live on `model.module`; use `unwrap(model)`.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys

import torch
import torch.distributed as dist
from torch import nn


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def print0(*args, **kw) -> None:
    """print() on rank 0 only (to stderr unless `file=` is given)."""
    if rank() == 0:
        kw.setdefault("file", sys.stderr)
        kw.setdefault("flush", True)
        print(*args, **kw)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def device_for_rank() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(timeout_s: float = 1800) -> torch.device:
    """Join the process group torchrun describes (no-op for a plain process); returns the device."""
    device = device_for_rank()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not is_dist():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return device


def cleanup_distributed() -> None:
    if is_dist():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in a single process); returns t."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def build_mesh(device: torch.device):
    """A 1-D device mesh over all ranks (None in a single process)."""
    if not is_dist():
        return None
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(device.type, (world_size(),), mesh_dim_names=("dp",))


def resolve_precision(cfg, device: torch.device) -> torch.dtype:
    """fp32 or bf16 compute dtype from cfg.precision (auto: bf16 on GPU, fp32 on CPU)."""
    if cfg.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float32


def resolve_parallel(cfg) -> str:
    """cfg.parallel, or 'none' in a single process."""
    return cfg.parallel if is_dist() and world_size() > 1 else "none"


def unwrap(model: nn.Module) -> nn.Module:
    """The Olmo2 module under a DDP wrapper (FSDP2 wraps in place, so it is the model)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def grad_scale(mode: str) -> float:
    """Loss multiplier that turns the ranks' gradient *average* into a *sum*."""
    return float(world_size()) if mode in ("fsdp", "ddp") else 1.0


def parallelize(model: nn.Module, cfg, mesh, device: torch.device | None = None) -> nn.Module:
    """AC → compile → FSDP2 per block then root (or DDP, or none); returns the model to train.

    `model` is an `Olmo2` on CPU; it is moved to `device` (FSDP2 moves shards itself).
    A model on the meta device is materialised with `to_empty` on `device` after sharding,
    so a rank allocates only its shards; its values are then uninitialised memory: run
    `olmo2.train.init.init_weights` next (`build_model` does both).
    """
    device = device or device_for_rank()
    mode = resolve_parallel(cfg)
    layers = model.model.layers
    if cfg.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            CheckpointImpl, checkpoint_wrapper)
        for i, block in enumerate(layers):
            layers[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    if cfg.compile:
        for block in layers:
            block.compile()  # in place: parameter names stay unchanged
    compute = resolve_precision(cfg, device)
    meta = any(p.is_meta for p in model.parameters())
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
        for block in layers:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        if meta:
            model.to_empty(device=device)
        return model
    model = model.to_empty(device=device) if meta else model.to(device)
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


@contextlib.contextmanager
def grad_sync(model: nn.Module, mode: str, sync: bool):
    """Around one micro-batch's backward: communicate gradients only if `sync` (the last
    micro-batch of a step). Earlier micro-batches accumulate locally — FSDP2 keeps the
    unsharded gradients (`set_requires_gradient_sync(False)`: no reduce-scatter), DDP skips
    its all-reduce (`no_sync`) — and the last backward reduces the sum once.
    Trade-off under FSDP2: the unsharded gradients of the whole model stay in memory until
    the last micro-batch (per block, as FSDP2 holds them), for 1/n_micro the communication."""
    if mode == "fsdp":
        model.set_requires_gradient_sync(sync)  # every FSDP module under the root (recurse)
        yield
    elif mode == "ddp" and not sync:
        with model.no_sync():
            yield
    else:
        yield


def use_autocast(cfg, device: torch.device) -> bool:
    """bf16 autocast only when FSDP2's mixed-precision policy does not already cast."""
    return resolve_precision(cfg, device) == torch.bfloat16 and resolve_parallel(cfg) != "fsdp"
