"""The module swap: which module of an `Olmo2` becomes which quantized module, and doing it.

    cfg = QuantConfig("int4", group_size=128)
    plan = quant_plan(model, cfg)        # {"model.layers.0.self_attn.q_proj": TensorPlan("int4", 128), ...}
    quantize_model(model, "int4", group_size=128)   # in place; returns the model

The plan is also what a quantized checkpoint's metadata records (olmo2/quant/io.py), so a
load rebuilds exactly the modules that were saved.

Rules (each measured; see benchmarks/RESULTS.md, "Quantized kernels" and the quality report):
- Every block linear takes the mode's format.
- **int4 needs the group size to divide in_features.** A linear where it does not (tiny
  test shapes: d_model 64 with group 128) is stored **int8** instead — never silently
  a different group size, so one checkpoint has one group size — and the plan says so.
- **LM head**: quantized like the other linears by default (`lm_head=None`): at the 1B
  it is 16% of the bytes read per token, so leaving it wide costs speed in every mode.
  int8 re-measured with the 15-bit-activation native kernel (2026-11-29, demo soup, base
  bf16 weights in fp32): the int8 head meets the top-1 goal (99.28% decode; a bf16 head
  gives 99.55%), and a bf16 head decoded the 1B at 0.85-0.96x (median 0.88x) the tok/s of
  the int8 head at 1 thread, so int8 stays the default; `lm_head="bf16"` is there for
  when the extra agreement is worth that speed.
  `lm_head="int8"` keeps it at int8 in int4 mode (what llama.cpp's Q4_0 does with Q6_K),
  for when the report shows the int4 head costs too much quality.
- **Embedding**: int8 rows in int8/int4 mode, bf16 in bf16 mode. A decode step gathers one
  row, so the table's format never costs speed, only memory: int8 is 1/4 of fp32. When
  the float table is a view of the checkpoint file being loaded (quantizing at load), it
  stays there and lookups convert their rows (linear.py `_RowTable.over_rows`: the same
  values, none of the table resident until read).

Order (quantize_model): the largest modules first, each packed for its kernels as soon as
it is quantized. Packing all at the end held every bf16 plain weight while the packed
copies were made, and at the LM head both of its copies (+0.38 GiB over the loaded
model for the bf16 1B); packing each at once, biggest first, makes the transient one
module's copy while little else is resident yet.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch
from torch import nn

from olmo2.errors import ConfigError
from olmo2.quant import formats
from olmo2.quant.linear import BF16Embedding, BF16Linear, Int4Linear, Int8Embedding, Int8Linear

MODES = ("int8", "int4", "bf16")
DEFAULT_GROUP_SIZE = 128


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize a model."""
    mode: str                      # int8 | int4 | bf16: the format of the block linears
    group_size: int = DEFAULT_GROUP_SIZE   # int4 only: input columns per scale/zero
    lm_head: str | None = None     # None: like the blocks; or int8 | int4 | bf16
    embedding: str | None = None   # None: int8 (int8/int4 modes) or bf16 (bf16 mode)

    def validated(self) -> "QuantConfig":
        if self.mode not in MODES:
            raise ConfigError(f"quant mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.group_size not in formats.INT4_GROUP_SIZES:
            raise ConfigError(f"--group-size {self.group_size}: use one of "
                              f"{', '.join(map(str, formats.INT4_GROUP_SIZES))}")
        if self.lm_head is not None and self.lm_head not in MODES:
            raise ConfigError(f"lm_head format {self.lm_head!r}: use one of {', '.join(MODES)}")
        if self.embedding is not None and self.embedding not in ("int8", "bf16"):
            raise ConfigError(f"embedding format {self.embedding!r}: use int8 or bf16")
        return self


@dataclass(frozen=True)
class TensorPlan:
    """One module's stored format (group_size only for int4)."""
    fmt: str
    group_size: int | None = None


def _linear_plan(fmt: str, in_features: int, group_size: int) -> TensorPlan:
    if fmt == "int4":
        if formats.int4_group_fits(in_features, group_size):
            return TensorPlan("int4", group_size)
        return TensorPlan("int8")  # the non-divisible rule (module docstring)
    return TensorPlan(fmt)


def quant_plan(model: nn.Module, cfg: QuantConfig) -> dict[str, TensorPlan]:
    """Module name → format, for every Linear and Embedding of `model`."""
    cfg = cfg.validated()
    plan: dict[str, TensorPlan] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            plan[name] = TensorPlan(cfg.embedding or ("bf16" if cfg.mode == "bf16" else "int8"))
        elif isinstance(m, nn.Linear):
            fmt = cfg.lm_head if name == "lm_head" and cfg.lm_head else cfg.mode
            plan[name] = _linear_plan(fmt, m.in_features, cfg.group_size)
    return plan


def empty_module(old: nn.Module, tp: TensorPlan) -> nn.Module:
    """The quantized module for `old` with uninitialised buffers (filled by a load)."""
    dtype = old.weight.dtype if old.weight.dtype.is_floating_point else torch.float32
    if isinstance(old, nn.Embedding):
        cls = {"int8": Int8Embedding, "bf16": BF16Embedding}[tp.fmt]
        return cls(old.num_embeddings, old.embedding_dim, out_dtype=dtype, device=old.weight.device)
    if tp.fmt == "int4":
        m = Int4Linear(old.in_features, old.out_features, tp.group_size, device=old.weight.device)
    else:
        m = {"int8": Int8Linear, "bf16": BF16Linear}[tp.fmt](old.in_features, old.out_features,
                                                               device=old.weight.device)
    m.compute_dtype = dtype
    return m


ROW_BLOCK_ELEMENTS = 1 << 22  # quantize this many weights at a time (a 16 MiB fp32 block)


def _from_float_by_rows(cls, w: torch.Tensor, *args, release=None) -> nn.Module:
    """`cls.from_float(w, *args)`, a block of rows at a time. Every format quantizes each
    row on its own, so the result is identical; the fp32 temporaries of the quantizers
    (upcasts, abs, rounding: several copies of their input) then stay a few blocks in size
    instead of several copies of a 100k-row embedding or LM head (~0.8 GB each in the 1B).
    Each block's result is copied into buffers allocated once at full size: gathering the
    blocks and concatenating them at the end held every buffer twice at that moment (+0.37
    GiB of peak RSS for the 1B's bf16 LM head). `release(block)`, if given, is called on
    each block of `w` once it is quantized."""
    rows = max(1, ROW_BLOCK_ELEMENTS // max(1, w.shape[1]))
    m, full = None, {}
    for r in range(0, w.shape[0], rows):
        part = cls.from_float(w[r:r + rows], *args)
        if m is None:
            m = part
            if rows >= w.shape[0]:  # one block: it is the whole result
                full = None
            else:  # every buffer of every format is row-major in the output rows
                full = {name: torch.empty((w.shape[0], *buf.shape[1:]), dtype=buf.dtype, device=buf.device)
                        for name, buf in part.named_buffers(recurse=False)}
        if full is not None:
            for name, buf in part.named_buffers(recurse=False):
                full[name][r:r + buf.shape[0]].copy_(buf)
        del part
        if release is not None:
            release(w[r:r + rows])
    if full:
        for name, buf in full.items():
            setattr(m, name, buf)
        if hasattr(m, "out_features"):
            m.out_features = w.shape[0]
        else:
            m.num_embeddings = w.shape[0]
    return m


def quantized_module(old: nn.Module, tp: TensorPlan, release=None, map_rows: bool = False) -> nn.Module:
    """The quantized module holding `old`'s weight in format `tp` (`release`: see below;
    `map_rows`: an embedding keeps `old`'s float table and converts the rows it looks up)."""
    w = old.weight.detach()
    if isinstance(old, nn.Embedding):
        cls = {"int8": Int8Embedding, "bf16": BF16Embedding}[tp.fmt]
        if map_rows:
            return cls.over_rows(w)
        return _from_float_by_rows(cls, w, release=release)
    if tp.fmt == "int4":
        m = _from_float_by_rows(Int4Linear, w, tp.group_size, release=release)
    else:
        m = _from_float_by_rows({"int8": Int8Linear, "bf16": BF16Linear}[tp.fmt], w, release=release)
    m.compute_dtype = w.dtype
    return m


def quantized_module_releasing(old: nn.Module, tp: TensorPlan) -> nn.Module:
    """`quantized_module` dropping the float weight's mapped file pages block by block as
    they are quantized (olmo2/checkpoint.py release_pages): quantizing a memory-mapped fp32
    checkpoint on the fly then peaks near the quantized size instead of holding every fp32
    page it read (a no-op for weights that are not in a tracked mapping)."""
    from olmo2.checkpoint import is_mapped, page_dropper, release_pages
    m = quantized_module(old, tp, release=release_pages, map_rows=is_mapped(old.weight))
    if isinstance(old, nn.Embedding) and getattr(m, "_rows", None) is not None:
        m.drop_pages(page_dropper(m._rows))  # no page of the table stays resident (linear.py)
    return_free_memory()
    m.prepare()  # packed now, while little else is resident (module docstring, "Order")
    return_free_memory()
    return m


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def return_free_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc `malloc_trim(0)`; a no-op elsewhere).

    Why: a load frees many multi-MB temporaries (the quantizers' fp32 blocks, the plain bf16
    weights that oneDNN's packed copies replace) in the middle of the heap, where glibc keeps
    them resident; the next allocations rarely fit them exactly, so the resident set grew to
    ~0.5 GiB over the weights for the 1B in bf16. Trimming after each module kept the bf16
    1B's load at the weights plus torch's own ~0.2 GiB (peak 3.86 → 3.65 GiB measured, after
    load 3.48 → 3.14)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def swap_modules(model: nn.Module, plan: dict[str, TensorPlan], build) -> nn.Module:
    """Replace each planned module by `build(old, plan)`, in place."""
    for name, tp in plan.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, build(getattr(parent, attr), tp))
    return model


def prepare(model: nn.Module) -> nn.Module:
    """Pack every quantized module's weights for the kernels this CPU will use."""
    from olmo2.quant.linear import _Quantized
    for m in model.modules():
        if isinstance(m, _Quantized):
            m.prepare()
            return_free_memory()  # the plain copies a packing dropped
    return model


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str, group_size: int = DEFAULT_GROUP_SIZE,
                   lm_head: str | None = None, embedding: str | None = None) -> nn.Module:
    """Quantize `model` (an `Olmo2`) in place; its float weights are released module by module."""
    cfg = QuantConfig(mode, group_size, lm_head, embedding).validated()
    plan = quant_plan(model, cfg)
    size = {n: model.get_submodule(n).weight.numel() for n in plan}
    biggest_first = dict(sorted(plan.items(), key=lambda kv: -size[kv[0]]))  # stable: ties keep model order
    swap_modules(model, biggest_first, quantized_module_releasing)
    model.quant_plan = plan
    model.quant_config = cfg
    return prepare(model)
