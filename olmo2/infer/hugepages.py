"""An inference model's weights in one anonymous mapping backed by transparent huge pages.

    from olmo2.infer.hugepages import into_huge_pages
    arena = into_huge_pages(model)    # None where it does not apply (see `why_not`)
    arena.huge_bytes()                # how much of it the kernel backs with 2 MiB pages

Why (issue 9, benchmarks/RESULTS.md "Weights in huge pages"): batch-1 decode streams every
weight byte once per token (5.1 GB for the fp32 1B, 0.63 GB at int4), and with 4 KiB pages
that is a TLB miss, and a page walk, every 4 KiB: 1.25 million walks a token at fp32. The
walks' page-table lines compete with the weights for the caches, and on this shared host,
whose memory is busy with other tenants, each one costs a memory latency the hardware
prefetcher cannot hide (it does not run across a 4 KiB boundary). With the weights in 2 MiB
pages the walks all but vanish: the same step, same process, alternating, ran 1.34x (int4),
1.25x (int8) and 1.24x (bf16) per-round medians, every round above 1.15x
(benchmarks/hugepages_ab.py); fp32 over its memory-mapped checkpoint 1.00x in a fast host
phase, 1.43x in a slower one (a scratch run). llama.cpp maps its GGUF file in 4 KiB
page-cache pages, and so did olmo2's fp32 path: our reading of why fp32 trailed it in slow
host phases.

How: the tensors a decode streams (every parameter and buffer of at least `MIN_BYTES`,
except the embedding table's, which a decode only indexes: it stays where the loader put
it, mapped or not) are copied, one by one, into a single anonymous mapping aligned to 2 MiB
and marked MADV_HUGEPAGE, and the modules are pointed at the copies (Parameters keep their
identity: `p.data` is swapped). One mapping for all of them wastes at most one partly used
huge page; a huge page per tensor would waste up to 2 MiB on each of the 1B's ~340 tensors.
Each source is let go block by block (32 MiB) as its copy is made: a memory-mapped
checkpoint's pages are dropped (olmo2/checkpoint.py release_pages), a freshly loaded
model's own heap blocks are dropped too (MADV_DONTNEED, then freed; quant/swap.py
return_free_memory gives the heap back), so the peak stays the weights plus one block and
the resident set after the move is what it was before (benchmarks/peak_rss.py). The copies are bit-for-bit the same
tensors: logits do not change (tests/test_hugepages.py).

When it does not apply (`why_not` says, and the model is left as it was):
- OLMO2_HUGEPAGES=0 (the A/B's control, or to share one page-cache copy of an fp32
  checkpoint between processes: anonymous copies are per process);
- the kernel has THP off (`/sys/kernel/mm/transparent_hugepage/enabled` is `[never]`) or
  no such file (not Linux): 4 KiB anonymous pages would gain nothing over the loader's;
- a weight not on the CPU.
Where the kernel grants fewer huge pages than asked (memory too fragmented to compact), the
rest of the mapping is ordinary 4 KiB pages: still correct, only less fast.

Who calls it: olmo2.checkpoint.load_model for inference loads (`quant` given: every
inference verb), after quantizing and packing. Training and conversion loads never do.
"""
from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Callable

import torch
from torch import nn

from olmo2.infer.heap import _glibc

HUGE = 2 << 20          # the x86-64 transparent huge page
ALIGN = 64              # each tensor starts on a cache line, as torch's own allocator does
MIN_BYTES = 64 << 10    # smaller tensors (norm weights) are a page or two: no walks to save
BLOCK = 32 << 20        # bytes copied before their source is let go (_copy_releasing)
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_ENABLED) -> str:
    """The kernel's THP setting: 'always', 'madvise', 'never', or '' where there is none."""
    try:
        text = open(path).read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else ""


def why_not(model: nn.Module | None = None) -> str:
    """'' if `into_huge_pages(model)` would move the weights (without a model: if huge pages
    apply at all, as for olmo2/infer/kvcache.py's buffers), else the reason they do not."""
    if os.environ.get("OLMO2_HUGEPAGES", "1").strip() == "0":
        return "OLMO2_HUGEPAGES=0"
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return "no MADV_HUGEPAGE on this platform"
    mode = thp_mode()
    if mode not in ("always", "madvise"):
        return f"transparent huge pages are {mode or 'unavailable'} in this kernel"
    # parameters and buffers, not state_dict(): a quantized embedding table's state_dict
    # converts the whole mapped fp32 table (quant/linear.py _RowTable)
    if model is not None and any(t.device.type != "cpu" for t in list(model.parameters()) + list(model.buffers())):
        return "weights not on the CPU"
    return ""


def streamed_tensors(model: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """(module, attribute, tensor) for each tensor a decode streams (module docstring): every
    parameter and buffer of at least MIN_BYTES, dense and contiguous, outside the embedding."""
    skip = set()
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)  # Olmo2's (HF names)
    for m in model.modules():  # quantized tables (quant/linear.py _RowTable) stand in embed_tokens
        if isinstance(m, nn.Embedding) or m is embed:
            skip.update(id(t) for t in list(m.parameters()) + list(m.buffers()))
    return [(m, name, t) for m in model.modules()  # each module once
            for name, t in list(m._parameters.items()) + list(m._buffers.items())
            if not (t is None or id(t) in skip or t.layout is not torch.strided or not t.is_contiguous()
                    or t.device.type != "cpu" or t.numel() * t.element_size() < MIN_BYTES)]


class Arena:
    """One anonymous mapping of at least `nbytes`, starting on a 2 MiB boundary and marked
    MADV_HUGEPAGE; `place(t)` copies tensors into it one after another."""

    def __init__(self, nbytes: int):
        self.size = (max(nbytes, 1) + HUGE - 1) // HUGE * HUGE
        self._mm = mmap.mmap(-1, self.size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        view = ctypes.c_char.from_buffer(self._mm)
        addr = ctypes.addressof(view)
        del view  # an exported buffer would keep the mapping from ever closing
        self._start = -addr % HUGE  # offset of the first 2 MiB boundary inside the mapping
        self.base = addr + self._start
        self._mm.madvise(mmap.MADV_HUGEPAGE, self._start, self.size)
        self.used = 0

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """A tensor of `shape` and `dtype` in the arena's next bytes. Not yet written memory
        of the arena reads as zeros (a fresh anonymous mapping)."""
        n = torch.Size(shape).numel() * dtype.itemsize
        off = (self.used + ALIGN - 1) // ALIGN * ALIGN
        if off + n > self.size:
            raise ValueError(f"arena of {self.size} bytes has no room for {n} more at {off}")
        self.used = off + n
        if not n:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self._mm, dtype=torch.uint8, count=n, offset=self._start + off).view(dtype).view(shape)

    def alloc(self, t: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor like contiguous `t` (dtype, shape) in the arena's next bytes."""
        return self.empty(t.shape, t.dtype)

    def place(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of contiguous `t` inside the arena (same dtype, shape and values)."""
        dst = self.alloc(t)
        dst.copy_(t)
        return dst

    def contains(self, t: torch.Tensor) -> bool:
        return self.base <= t.data_ptr() < self.base + self.size

    def huge_bytes(self) -> int:
        """Bytes of this mapping the kernel backs with huge pages now (its AnonHugePages in
        /proc/self/smaps; 0 where that is unreadable)."""
        return (smaps_field(self.base, "AnonHugePages") or 0) * 1024


def smaps_field(addr: int, field: str) -> int | None:
    """`field` of the mapping holding address `addr` in /proc/self/smaps, as the int it gives
    (kB for sizes; THPeligible is 0/1), or None (no such mapping or field, or no smaps)."""
    try:
        lines = open("/proc/self/smaps").read().splitlines()
    except OSError:
        return None
    inside = False
    for ln in lines:
        head = ln.split(maxsplit=1)[0] if ln else ""
        if "-" in head and not head.endswith(":"):  # a mapping's header line: lo-hi perms ...
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and head == field + ":":
            return int(ln.split()[1])
    return None


def assign(module: nn.Module, name: str, t: torch.Tensor) -> None:
    """Point `module.name` (a parameter or buffer) at `t`; a Parameter keeps its identity."""
    p = module._parameters.get(name)
    if p is not None:
        p.data = t
    else:
        module._buffers[name] = t


def _drop_pages(t: torch.Tensor) -> None:
    """MADV_DONTNEED over the whole pages inside contiguous `t`'s bytes: they leave the
    resident set, and read back as zeros. Only for memory about to be freed that nothing
    else reads: the allocator's own bookkeeping lies outside a block's data (before its
    first byte, after its last), so it is never inside such a page."""
    page = mmap.PAGESIZE
    lo = -(-t.data_ptr() // page) * page
    hi = (t.data_ptr() + t.numel() * t.element_size()) // page * page
    libc = _glibc()  # the argument above is about glibc's allocator: elsewhere, keep the pages
    if hi > lo and libc is not None:
        libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), ctypes.c_int(mmap.MADV_DONTNEED))


def _sole_user(t: torch.Tensor) -> bool:
    """Whether `t` is the only tensor on its storage (no view of it, and no packed copy that a
    kernel built around it, such as fbgemm's, holds it). Asks torch's storage use count (a
    private call: where it is missing, the answer is no): `t` itself and the storage object
    made to ask are the two uses."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return False
    s = t.untyped_storage()
    return count(s._cdata) <= 2 and s.nbytes() == t.numel() * t.element_size()


def _copy_releasing(dst: torch.Tensor, src: torch.Tensor, release, owned: bool) -> None:
    """dst[:] = src in blocks of BLOCK bytes cut at page boundaries, each block of the source
    let go as soon as it is copied: `release(block)` (a mapped checkpoint's pages; True if it
    took it), else, if `owned` and nothing else uses the source's storage, its pages dropped.
    So a move's transient is one block, not one tensor (the 1B's fp32 LM head is 0.77 GiB)."""
    owned = owned and _sole_user(src)  # asked before the views below add uses of their own
    d8, s8 = dst.reshape(-1).view(torch.uint8), src.reshape(-1).view(torch.uint8)
    n, p0 = s8.numel(), s8.data_ptr()
    a = 0
    while a < n:
        b = min(n, (p0 + a) // BLOCK * BLOCK + BLOCK - p0)  # next BLOCK boundary of the address
        d8[a:b].copy_(s8[a:b])
        if not (release is not None and release(s8[a:b])) and owned:
            _drop_pages(s8[a:b])
        a = b


def into_huge_pages(model: nn.Module, release: Callable[[torch.Tensor], bool] | None = None,
                    owned: bool = False) -> Arena | None:
    """Move the tensors a decode streams into one huge-page arena, in place (module
    docstring). As each block of a source is copied, `release(block)` is called on it (a
    memory-mapped checkpoint's pages: olmo2.checkpoint.release_pages) and, if that does not
    take it and `owned` (the caller vouches that nothing but the model's modules holds
    these tensors, as for a model just loaded), its pages are dropped at once. Returns the
    arena, or None (model untouched) where `why_not(model)` gives a reason."""
    if why_not(model):
        return None
    from olmo2.quant.swap import return_free_memory
    items = streamed_tensors(model)
    if not items:
        return None
    arena = Arena(sum((t.numel() * t.element_size() + ALIGN - 1) // ALIGN * ALIGN for _, _, t in items))
    moved: dict[int, torch.Tensor] = {}  # one copy per tensor shared by two attributes
    with torch.no_grad():
        for i, (m, name, t) in enumerate(items):
            new = moved.get(id(t))
            if new is None:
                new = moved[id(t)] = arena.alloc(t)
                _copy_releasing(new, t, release, owned)
            assign(m, name, new)
            items[i] = None  # drop our reference: the source can be freed now
            del t
            if i % 16 == 15:
                return_free_memory()
    return_free_memory()
    return arena
