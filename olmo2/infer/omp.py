"""How long idle OpenMP threads spin before they sleep, set once per `olmo2` process.

    from olmo2.infer.omp import bounded_spin
    bounded_spin()   # before torch is imported: GOMP_SPINCOUNT=10000 unless the user chose

Why: a decode step is ~120 OpenMP regions (one per GEMV, each ending in a barrier), and
libgomp's default lets a waiting thread spin for up to 300k rounds (milliseconds) before
it sleeps. On an idle machine that is what makes back-to-back regions cheap. But when
another program keeps one core busy — a laptop's browser, a build — the spinning thread
burns its share of that core while the thread it waits for sits in the run queue behind
the other program, at every barrier: int4 decode of the 1B on 2 threads fell from ~17 to
~1 tok/s with one `yes > /dev/null` running (llama.cpp: from ~9 to ~1.6). With 10000
rounds (~0.5 ms on this CPU, still far longer than the gaps between a step's regions) it
fell to ~5.5 instead, and cost ~4% on the idle machine (per-round median 0.96×, range
0.80–1.06, 8 rounds of fresh processes); OMP_WAIT_POLICY=PASSIVE kept ~8 under load but
cost ~20% idle (benchmarks/RESULTS.md, "OpenMP spin under load").

libgomp reads its environment once, when it is loaded (by `import torch`), so this only
takes effect before that, and never overrides GOMP_SPINCOUNT or OMP_WAIT_POLICY set by
the user. The CLI calls it first thing; code that imports olmo2 as a library decides for
itself.
"""
from __future__ import annotations

import os
import sys

SPINCOUNT = "10000"


def bounded_spin() -> bool:
    """Set GOMP_SPINCOUNT for this process where it can still take effect and the user
    chose nothing; returns whether it was set."""
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
    return True
