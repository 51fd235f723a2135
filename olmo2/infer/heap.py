"""Keep freed activation memory in the C heap, so a prefill stops page-faulting its activations in.

    from olmo2.infer.heap import keep_freed_memory
    keep_freed_memory()     # once per process; Decoder() calls it; True where it took effect

Why (issue 9, benchmarks/RESULTS.md "fp32 prompt: where the time goes"): PyTorch's CPU
allocator has no cache; every activation tensor is a posix_memalign/free through glibc.
A 128-token prefill of the 1B allocates [128, 8192] fp32 tensors (4 MiB) and [128, 2048]
ones (1 MiB) per block. glibc serves blocks above its mmap threshold with a fresh mmap
(freed with munmap), and gives the top of the heap back to the kernel whenever more than
its trim threshold lies free there. Both thresholds start at 128 KiB and only adapt
upwards as mmapped blocks are freed (to about twice the largest freed block, ~8 MiB
here), so the ~12 MB the MLP frees at once is given back inside every block (strace:
brk down and up again 149 times per prefill): ~35-60k minor page faults per 128-token
prefill (140-240 MB of pages zeroed by the kernel and mapped again, every prompt),
measured with getrusage; ~0 after.
Without the faults a 2-thread prefill of the 1B ran 1.00-1.16x faster per uncontended
round (medians 1.06x and 1.10x in two runs of benchmarks/prefill_heap_ab.py --in-process;
1 thread: 0.97-1.09x, within the host's noise): the faults are taken inside the parallel
regions, where the other thread waits for them.

How: `mallopt(M_MMAP_THRESHOLD, 32 MiB)` (glibc's maximum: larger blocks are still
mmapped, so a 400 MB logits tensor is returned at once) and `mallopt(M_TRIM_THRESHOLD,
256 MiB)`. Setting either also turns glibc's dynamic adjustment off. Cost: up to 256 MiB
of *freed* heap may stay resident between calls; the peak RSS does not grow (the memory
was resident at the peak anyway), measured with benchmarks/peak_rss.py (RESULTS.md).

Footguns:
- Process-wide, and glibc-only (no-op on musl, macOS, Windows: returns False).
- `OLMO2_HEAP=default` skips it (the A/B in RESULTS.md; glibc's dynamic thresholds
  cannot be restored once set, so the A/B alternates processes).
- Only the first call does anything; later calls return the first call's result.
"""
from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 32 << 20   # glibc's cap for M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 << 20  # free heap top kept before trimming: > a 512-token chunk's activations
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>

_done: bool | None = None


def _glibc():
    """The process's glibc, or None (another libc, or not Linux)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only; musl has a mallopt that does nothing
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (module docstring); True if both were set."""
    global _done
    if _done is None:
        libc = None if os.environ.get("OLMO2_HEAP", "").strip().lower() == "default" else _glibc()
        _done = bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                     and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    return _done
