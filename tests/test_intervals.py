"""The replication's statistics against hand-computed values (no scipy): Wilson intervals,
the trivial arithmetic baselines, and the (paired) bootstrap intervals for bits per byte."""
import math

import numpy as np
import pytest

from olmo2.eval.intervals import (bpb_ci, distribution_baseline, majority_baseline, paired_bpb_diff,
                                  ratio_ci, wilson)


@pytest.mark.parametrize("k,n,lo,hi", [
    # hand-computed: center (p + z²/2n)/(1 + z²/n), half z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n)
    (5, 10, 0.236593, 0.763407),
    (0, 20, 0.0, 0.161125),        # k = 0: upper = (z²/n)/(1 + z²/n)
    (20, 20, 0.838875, 1.0),
    (57, 540, 0.082368, 0.134316),  # by hand: centre 0.108342, half 0.025975
    (1, 2, 0.094531, 0.905469),
])
def test_wilson_hand_values(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=2e-6)


def test_wilson_is_not_wald_and_rejects_bad_counts():
    # Wald at 0/20 would be [0, 0]; Wilson keeps a real upper bound
    assert wilson(0, 20)[1] > 0.15
    with pytest.raises(ValueError):
        wilson(3, 0)
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_majority_and_distribution_baselines():
    train = [3, 3, 3, 5, 5, 7, 9, 9, 9, 1]       # 3 and 9 tie at 3 → the smaller, 3, is the majority
    test = [3, 9, 5, 5, 11, 3]
    hits, answer = majority_baseline(train, test)
    assert (hits, answer) == (2, 3)
    # expected hits of guessing from the train distribution: p(3)+p(9)+p(5)+p(5)+p(11)+p(3)
    assert distribution_baseline(train, test) == pytest.approx(0.3 + 0.3 + 0.2 + 0.2 + 0.0 + 0.3)
    with pytest.raises(ValueError):
        majority_baseline([], test)


def test_ratio_ci_degenerate_and_deterministic():
    est, lo, hi = ratio_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])  # every unit has ratio 2
    assert (est, lo, hi) == pytest.approx((2.0, 2.0, 2.0))
    a = ratio_ci([1.0, 5.0, 2.0, 8.0], [1.0, 1.0, 1.0, 1.0], seed=3)
    assert a == ratio_ci([1.0, 5.0, 2.0, 8.0], [1.0, 1.0, 1.0, 1.0], seed=3)
    assert a[1] < a[0] < a[2]
    with pytest.raises(ValueError):
        ratio_ci([1.0], [1.0, 2.0])


def test_bpb_ci_units_and_paired_diff_of_identical_models():
    nll, nb = [math.log(2) * 10, math.log(2) * 30], [10, 20]  # 40 bits over 30 bytes
    assert bpb_ci(nll, nb)[0] == pytest.approx(40 / 30)
    assert paired_bpb_diff(nll, nll, nb) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_width_matches_the_normal_theory():
    """Equal-size units, per-unit differences with sd 1: the 95% interval of the mean is
    about ±1.96·sd/√n (the ratio estimator reduces to a mean here)."""
    rng = np.random.default_rng(0)
    n = 400
    base = rng.normal(100, 30, n)               # large shared per-passage difficulty
    diff = rng.normal(-0.5, 1.0, n)             # small paired effect
    est, lo, hi = paired_bpb_diff((base + diff) * math.log(2), base * math.log(2), np.ones(n), n_boot=4000)
    se = diff.std(ddof=1) / math.sqrt(n)
    assert est == pytest.approx(diff.mean())
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.12)
    assert hi < 0  # the shared difficulty cancels: a 0.5 effect is resolved with n = 400
    # unpaired, the same effect is buried in the per-passage difficulty
    _, lo_a, hi_a = bpb_ci((base + diff) * math.log(2), np.ones(n), n_boot=1000)
    assert hi_a - lo_a > 10 * (hi - lo)
