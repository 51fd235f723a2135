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


def _cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere: then no native bf16 is assumed)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16_reason() -> str:
    """Why `precision=fast` trains in bf16 or fp32 on this CPU, one line ("bf16: ..." / "fp32: ...").

    bf16 only where the CPU has bf16 dot products (AMX or AVX-512 BF16) AND torch dispatches
    its AVX-512 kernels: on an AVX2-only CPU (AMD Zen 3) bf16 GEMM is emulated, ~7x slower
    than fp32 (../shared/docs/cpu-baseline.md). `ATEN_CPU_CAPABILITY=avx2` forces the fp32
    path on any CPU (how the fallback is tested here)."""
    cap = torch.backends.cpu.get_cpu_capability()
    native = sorted({"amx_bf16", "avx512_bf16"} & _cpu_flags())
    if not native:
        return f"fp32: this CPU has no bf16 dot products (no amx_bf16/avx512_bf16 flag; torch {cap})"
    if not cap.upper().startswith("AVX512"):
        return f"fp32: torch dispatches {cap} kernels here (ATEN_CPU_CAPABILITY?), which emulate bf16"
    return f"bf16: {'/'.join(native)} with torch {cap} kernels"


def resolve_precision(cfg, device: torch.device) -> torch.dtype:
    """fp32 or bf16 compute dtype from cfg.precision: auto = bf16 on GPU, fp32 on CPU;
    fast = bf16 on GPU and on CPUs with native bf16 (`cpu_bf16_reason`), else fp32."""
    if cfg.precision in ("auto", "fast") and device.type != "cpu":
        return torch.bfloat16
    if cfg.precision == "fast":
        return torch.bfloat16 if cpu_bf16_reason().startswith("bf16") else torch.float32
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
    no_compiler = compiler_missing(device) if cfg.compile else None
    if no_compiler:
        print0(f"train.compile: {no_compiler}; training eager (same results, slower)")
    elif cfg.compile:
        # Per block, in place (parameter names stay unchanged). The blocks share one code
        # object, so Dynamo compiles the forward/backward once and every later block, and
        # every later stage in the same process (`olmo2 replicate`), reuses it. On the tiny
        # recipe this fuses the many small elementwise ops (norms, RoPE, SwiGLU, residuals)
        # that dominate an eager step at d_model 128 (benchmarks/cpu_train.py).
        for block in layers:
            block.compile()
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


def compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile cannot run on `device` here (None if it can): on a CPU Inductor
    needs a C++ compiler (g++/clang++, or $CXX), which a fresh machine may lack."""
    if device.type != "cpu":
        return None
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 (torch raises a bare RuntimeError or its own types)
        return f"no C++ compiler for Inductor ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


def use_autocast(cfg, device: torch.device) -> bool:
    """bf16 autocast only when FSDP2's mixed-precision policy does not already cast."""
    return resolve_precision(cfg, device) == torch.bfloat16 and resolve_parallel(cfg) != "fsdp"
