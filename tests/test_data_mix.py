"""Tests for mixes: deterministic up/down-sampling, proportions, published compositions."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from olmo2.data.loader import Loader, TokenDataset
from olmo2.data.mix import (DOLMINO_50B_DIRS, DOLMINO_MIX_1124_50B, OLMO_MIX_1124,
                            OLMO_MIX_1124_DIRS, Mix, Source, dolmino_50b, olmo_mix_1124,
                            sample_instances)
from olmo2.errors import DataError

T = 4


def make_source(d, tag: int, n_instances: int, n_shards: int = 2):
    d.mkdir(parents=True, exist_ok=True)
    per = [n_instances // n_shards + (i < n_instances % n_shards) for i in range(n_shards)]
    for i, k in enumerate(per):
        toks = tag * 100000 + i * 10000 + np.arange(k * T + 3)  # + a dropped tail
        np.save(d / f"part-{i}.npy", toks.astype(np.uint32))
    return str(d)


def test_sample_instances_down_up_deterministic():
    down = sample_instances(100, 30, seed=5)
    assert len(down) == 30 and len(set(down.tolist())) == 30 and down.max() < 100
    assert (down == sample_instances(100, 30, seed=5)).all()
    assert not (down == sample_instances(100, 30, seed=6)).all()
    up = sample_instances(10, 25, seed=1)
    c = Counter(up.tolist())
    assert len(up) == 25 and set(c) == set(range(10))
    assert sorted(Counter(c.values()).items()) == [(2, 5), (3, 5)]  # 2 full copies + 5 extra
    assert len(sample_instances(10, 0, seed=1)) == 0
    with pytest.raises(DataError):
        sample_instances(0, 3, seed=1)


def test_mix_natural_and_targets(tmp_path):
    a = make_source(tmp_path / "a", 1, 12)
    b = make_source(tmp_path / "b", 2, 10)
    c = make_source(tmp_path / "c", 3, 40)
    mix = Mix([Source("a", [a]), Source("b", [b], target_tokens=25 * T + 2),
               Source("c", [c + "/*.npy"], target_tokens=8 * T)], seed=7)
    ds = TokenDataset.from_mix(mix, T)
    comp = ds.composition()
    assert {k: v["instances"] for k, v in comp.items()} == {"a": 12, "b": 25, "c": 8}
    assert comp["b"]["available"] == 10 and abs(sum(v["fraction"] for v in comp.values()) - 1) < 1e-9
    tags = Counter(int(ds[i][0]) // 100000 for i in range(len(ds)))
    assert tags == {1: 12, 2: 25, 3: 8}
    rows_b = Counter(tuple(ds[i].tolist()) for i in range(len(ds)) if ds[i][0] // 100000 == 2)
    assert len(rows_b) == 10 and set(rows_b.values()) == {2, 3}  # whole instances repeated
    # adding a source does not change what the others sample
    mix2 = Mix(mix.sources + [Source("z", [a])], seed=7)
    ds2 = TokenDataset.from_mix(mix2, T)
    assert [ds2[i].tolist() for i in range(len(ds))] == [ds[i].tolist() for i in range(len(ds))]
    loader = Loader.from_mix(mix, T, global_batch_size=5, seed=1, num_epochs=1)
    seen = Counter(int(x) // 100000 for batch in loader for x in batch["input_ids"][:, 0])
    assert sum(seen.values()) == (len(ds) // 5) * 5
    assert loader.state_dict()["fingerprint"] == Loader.from_mix(mix, T, 5).state_dict()["fingerprint"]


def test_mix_errors(tmp_path):
    with pytest.raises(DataError, match="'web'"):
        TokenDataset.from_mix(Mix([Source("web", [str(tmp_path / "nope/*.npy")])]), T)
    with pytest.raises(DataError, match="duplicate"):
        Mix([Source("a", ["x"]), Source("a", ["y"])])


def test_published_compositions():
    assert abs(sum(OLMO_MIX_1124.values()) - 3.90e12) / 3.90e12 < 0.005
    assert OLMO_MIX_1124["dclm"] == 3_710_000_000_000 and OLMO_MIX_1124["wiki"] == 3_700_000_000
    assert abs(sum(DOLMINO_MIX_1124_50B.values()) - 51.5e9) / 51.5e9 < 0.01
    math = [k for k in DOLMINO_MIX_1124_50B if DOLMINO_50B_DIRS[k].startswith("math/")]
    assert abs(sum(DOLMINO_MIX_1124_50B[k] for k in math) - 10.7e9) / 10.7e9 < 0.01
    assert set(OLMO_MIX_1124) == set(OLMO_MIX_1124_DIRS)
    assert set(DOLMINO_MIX_1124_50B) == set(DOLMINO_50B_DIRS)


def test_recipe_functions_map_to_local_dirs(tmp_path):
    for src, sub in OLMO_MIX_1124_DIRS.items():
        make_source(tmp_path / "olmo" / sub / "tok", 1, 4, n_shards=1)
    mix = olmo_mix_1124(str(tmp_path / "olmo"))
    assert all(s.target_tokens is None for s in mix.sources)
    ds = TokenDataset.from_mix(mix, T)
    assert len(ds) == 4 * len(OLMO_MIX_1124)
    d = dolmino_50b(str(tmp_path / "dolmino"), scale=1e-9)
    assert {s.name: s.target_tokens for s in d.sources}["dclm_hq"] == 24
    assert d.sources[0].paths == [f"{tmp_path}/dolmino/dclm/**/*.npy"]
