"""Confidence intervals and trivial baselines for the replication's checks (numpy only).

    from olmo2.eval.intervals import wilson, majority_baseline, distribution_baseline, ratio_ci
    lo, hi = wilson(k=57, n=540)                              # 95% Wilson score interval of 57/540
    hits, answer = majority_baseline(train_answers, test_answers)
    expected_hits = distribution_baseline(train_answers, test_answers)
    est, lo, hi = ratio_ci([nll_a - nll_b per passage], [bytes per passage])   # paired bpb difference

Why these:
- **Wilson** for accuracies: the normal ("Wald") interval collapses to a point at 0 or n hits
  and undercovers for small p, which is exactly where a tiny model's arithmetic lives.
- **Trivial baselines** say what accuracy needs no arithmetic at all: always answering the
  most common training answer (`majority_baseline`, a count on the test problems), and
  guessing an answer drawn from the training answer distribution (`distribution_baseline`,
  its *expected* number of hits, sum over test problems of p_train(answer)).
- **Bits per byte is a ratio** (sum of NLL / sum of bytes over passages), so its interval is a
  bootstrap over passages of that ratio; comparing two models on the same text uses the
  *paired* per-passage NLL differences, whose noise is far smaller than either model's.

Footgun: the bootstrap resamples passages as independent units; passages cut from one long
document are correlated, so the interval is somewhat optimistic when few documents supply
many passages (the report says how many passages and documents it used).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054
"""The two-sided 95% standard-normal quantile."""


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes of n (k may be fractional: an expected count)."""
    if n <= 0:
        raise ValueError("wilson: n must be > 0")
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # clamp the float dust at the ends (k=0 gives center == half up to rounding)
    return max(0.0, center - half), min(1.0, center + half)


def majority_baseline(train_answers: Sequence, test_answers: Sequence) -> tuple[int, object]:
    """(hits on the test problems, answer) of always answering the most common training answer.

    Ties go to the smallest answer, so the baseline is deterministic."""
    if not train_answers:
        raise ValueError("majority_baseline: no training answers")
    counts = Counter(train_answers)
    top = max(counts.values())
    answer = min(a for a, c in counts.items() if c == top)
    return sum(a == answer for a in test_answers), answer


def distribution_baseline(train_answers: Sequence, test_answers: Sequence) -> float:
    """Expected hits of guessing each answer at random from the training answer distribution."""
    if not train_answers:
        raise ValueError("distribution_baseline: no training answers")
    counts = Counter(train_answers)
    n = len(train_answers)
    return sum(counts.get(a, 0) / n for a in test_answers)


def ratio_ci(num: Sequence[float], den: Sequence[float], n_boot: int = 2000, seed: int = 0,
             level: float = 0.95) -> tuple[float, float, float]:
    """(sum(num)/sum(den), lo, hi): the ratio and its percentile bootstrap interval over units.

    Units (here: validation passages) are resampled with replacement `n_boot` times with a
    seeded generator, so the same inputs always give the same interval."""
    a = np.asarray(num, dtype=np.float64)
    b = np.asarray(den, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("ratio_ci: num and den must be equal-length non-empty 1-d sequences")
    est = float(a.sum() / b.sum())
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    boots = a[idx].sum(axis=1) / b[idx].sum(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(boots, [tail, 1 - tail])
    return est, float(lo), float(hi)


def bpb_ci(nll_nats: Sequence[float], n_bytes: Sequence[float], **kw) -> tuple[float, float, float]:
    """Bits per byte over passages (nats summed, then / ln 2 / bytes) with its bootstrap interval."""
    est, lo, hi = ratio_ci(nll_nats, n_bytes, **kw)
    return est / math.log(2), lo / math.log(2), hi / math.log(2)


def paired_bpb_diff(nll_a: Sequence[float], nll_b: Sequence[float], n_bytes: Sequence[float],
                    **kw) -> tuple[float, float, float]:
    """bpb(a) - bpb(b) on the same passages, with the paired bootstrap interval."""
    d = np.asarray(nll_a, dtype=np.float64) - np.asarray(nll_b, dtype=np.float64)
    return bpb_ci(d, n_bytes, **kw)


def fmt_interval(est: float, lo: float, hi: float, fmt: str = ".4f") -> str:
    """'est [lo, hi]' for the report; values too small for `fmt` switch to 2-digit scientific
    notation, so a tiny but consistent difference never prints as '-0.0000 [-0.0000, -0.0000]'."""
    def f(x: float) -> str:
        s = format(x, fmt)
        return s if x == 0 or s.strip("-+0.") else format(x, ".1e")
    return f"{f(est)} [{f(lo)}, {f(hi)}]"
