"""How many CPU threads inference uses: an explicit `--threads`, else the cores this
process may run on.

    set_threads(None)   # len(os.sched_getaffinity(0)): respects taskset/cgroup cpusets
    set_threads(1)      # what the user asked

Why not torch's default: it counts the machine's physical cores, not the ones a
container or `taskset` leaves us, and oversubscribed OpenMP threads spin against each
other (decode is a chain of small GEMVs, each ending in a barrier). Hyper-threads add
nothing to a bandwidth-bound GEMV, but we cannot tell them apart portably, so the
affinity count is the default and `--threads` the override (`--threads 1` is faster when
other work already keeps the cores busy).
"""
from __future__ import annotations

import os

import torch


def default_threads() -> int:
    """CPUs this process may run on (falls back to os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None) -> int:
    """Set torch's intra-op thread count to n (None: `default_threads()`); returns it."""
    n = default_threads() if n is None else n
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
