"""Repetition instance filter (OLMo 2 `instance_filter`: periods 1..13, max_count 32).

An instance (a row of token ids) is *repetitive* if some n-gram with period p in
[min_period, max_period] occurs `max_count` or more times back to back, i.e. there is a span
x[s : s + p*max_count] with x[i] == x[i + p] for every i in [s, s + p*(max_count-1)).
OLMo 2 masks the loss of such instances (labels all -100); it does not drop them, so the
batch shape and data order are unchanged.

Vectorised per period over a whole [B, T] batch: eq = x[:, :-p] == x[:, p:], then a sliding
window sum (via cumsum) finds a run of >= p*(max_count-1) equal positions. 13 passes of
O(B*T) numpy work, about a millisecond for 8 x 4096 tokens.

Note: OLMo's `find_periodic_sequences` reshapes into rows of length p and then extends the
span at both ends; for spans of >= 32 repetitions it finds the same spans as this exact
definition (checked here against a brute-force reference, not against OLMo itself).
"""
from __future__ import annotations

import numpy as np

MIN_PERIOD, MAX_PERIOD, MAX_COUNT = 1, 13, 32


def repetitive_rows(x: np.ndarray, min_period: int = MIN_PERIOD,
                    max_period: int = MAX_PERIOD, max_count: int = MAX_COUNT) -> np.ndarray:
    """Bool [B]: row b contains a period-p n-gram repeated >= max_count times in a row."""
    x = np.asarray(x)
    if x.ndim == 1:
        return repetitive_rows(x[None], min_period, max_period, max_count)
    b, t = x.shape
    out = np.zeros(b, dtype=bool)
    for p in range(min_period, max_period + 1):
        need = p * (max_count - 1)  # consecutive positions with x[i] == x[i+p]
        if need <= 0:
            return np.ones(b, dtype=bool) if t > 0 else out
        if t - p < need:
            break  # longer periods need even more tokens
        eq = (x[:, :-p] == x[:, p:]).astype(np.int32)
        c = np.zeros((b, eq.shape[1] + 1), dtype=np.int32)
        np.cumsum(eq, axis=1, out=c[:, 1:])
        out |= ((c[:, need:] - c[:, :-need]) == need).any(axis=1)
    return out


def is_repetitive_bruteforce(row, min_period: int = MIN_PERIOD, max_period: int = MAX_PERIOD,
                             max_count: int = MAX_COUNT) -> bool:
    """Slow reference: try every start and period, count back-to-back copies."""
    row = list(row)
    n = len(row)
    for p in range(min_period, max_period + 1):
        for s in range(n - p + 1):
            gram = row[s:s + p]
            k, j = 1, s + p
            while j + p <= n and row[j:j + p] == gram:
                k += 1
                j += p
            if k >= max_count:
                return True
    return False
