"""Tests for the pretraining loader: order, shard boundaries, ranks, resume, masking, filter."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from olmo2.data.loader import Loader, TokenDataset
from olmo2.data.repetition import is_repetitive_bruteforce, repetitive_rows
from olmo2.errors import DataError

T = 8


@pytest.fixture
def shard_dir(tmp_path):
    """Shards whose tokens encode (shard, position): token = 10000*shard + position + 2."""
    lengths = [37, 8, 5, 64, 23]
    for i, n in enumerate(lengths):
        np.save(tmp_path / f"s{i:02d}.npy", (10000 * i + np.arange(n) + 2).astype(np.uint32))
    np.save(tmp_path / "s00.idx.npy", np.array([0, 37], dtype=np.uint64))  # must be ignored
    return tmp_path, lengths


def all_instances(loader):
    return [loader.dataset[i] for i in range(len(loader.dataset))]


def test_instances_never_cross_shards_and_tails_dropped(shard_dir):
    d, lengths = shard_dir
    ds = TokenDataset.from_paths(str(d), T)
    assert len(ds) == sum(n // T for n in lengths)
    for i in range(len(ds)):
        row = ds[i].astype(np.int64)
        assert len(set(row // 10000)) == 1  # one shard
        assert (np.diff(row) == 1).all()    # contiguous
        assert (row[0] - 2) % 10000 % T == 0  # aligned to instance starts of its shard


@pytest.mark.parametrize("world", [1, 2])
def test_order_matches_olmo_trainer(shard_dir, olmo_wheel, world):
    """Per-rank batches equal the OLMo trainer's: ai2-olmo 0.6.0
    olmo/data/__init__.py build_train_dataloader -> `IterableDataset(dataset,
    global_train_batch_size, seed=seed, epoch=epoch, shuffle=True, drop_last=data.drop_last)`
    iterated per rank, then `DataLoader(batch_size=device_train_batch_size,
    drop_last=data.drop_last)` — run here from the wheel's own IterableDataset."""
    from olmo_reference import olmo_iterable_dataset_class
    OlmoIterable = olmo_iterable_dataset_class(olmo_wheel)
    d, _ = shard_dir
    gbs, seed = 4, 6198
    n = len(TokenDataset.from_paths(str(d), T))
    for rank in range(world):
        ours = Loader.from_paths(str(d), T, gbs, seed=seed, rank=rank, world_size=world, num_epochs=2)
        got = [b["index"].tolist() for b in ours]
        assert len(got) == 2 * (n // gbs)
        for epoch in (0, 1):
            ref_ds = OlmoIterable(range(n), gbs, seed=seed, epoch=epoch, shuffle=True, drop_last=True,
                                  world_size=world, rank=rank, fs_local_rank=0, num_threads=0)
            flat = [x["index"] for x in ref_ds]
            b = gbs // world
            ref = [flat[i:i + b] for i in range(0, len(flat) - b + 1, b)]  # DataLoader(drop_last)
            mine = got[epoch * (n // gbs):(epoch + 1) * (n // gbs)]
            assert mine == ref[:len(mine)], (rank, epoch)
            # OLMo's last device batch may be one we drop (we keep only full global batches)
            assert len(ref) - len(mine) in (0, 1)


def test_rank_slices_disjoint_and_cover(shard_dir):
    d, _ = shard_dir
    world, gbs = 4, 8
    full = list(Loader.from_paths(str(d), T, gbs, seed=3, num_epochs=1))
    per_rank = [list(Loader.from_paths(str(d), T, gbs, seed=3, rank=r, world_size=world,
                                       num_epochs=1)) for r in range(world)]
    for step, g in enumerate(full):
        parts = [per_rank[r][step]["index"].tolist() for r in range(world)]
        flat = sum(parts, [])
        assert len(set(flat)) == gbs and sorted(flat) == sorted(g["index"].tolist())
        assert parts[1] == g["index"].tolist()[1::world]  # strided, as OLMo
        assert per_rank[2][step]["input_ids"].shape == (gbs // world, T)


def test_resume_from_any_step_matches_uninterrupted(shard_dir):
    d, _ = shard_dir
    mk = lambda: Loader.from_paths(str(d), T, 2, seed=11, num_epochs=3)  # noqa: E731
    ref = list(mk())
    spe = mk().steps_per_epoch
    assert len(ref) == 3 * spe
    for k in (0, 1, spe - 1, spe, spe + 2):
        a = mk()
        it = iter(a)
        for _ in range(k):
            next(it)
        sd = a.state_dict()
        b = mk()
        b.load_state_dict(sd)
        rest = list(b)
        assert len(rest) == len(ref) - k
        for x, y in zip(rest, ref[k:]):
            assert torch.equal(x["input_ids"], y["input_ids"])
            assert torch.equal(x["labels"], y["labels"])
    other = Loader.from_paths(str(d), T, 4, seed=11)
    with pytest.raises(DataError, match="global_batch_size"):
        other.load_state_dict(sd)


def test_batch_format(tmp_path):
    eos = 1
    toks = np.array([5, 6, eos, 7, eos, 8, 9, 10, eos, 11, 12, 13, 14, 15, 16, eos], np.uint32)
    np.save(tmp_path / "a.npy", toks)
    loader = Loader.from_paths(str(tmp_path), T, 2, seed=0)
    b = next(iter(loader))
    # exactly the documented keys: no document masking (OLMo 2 attends across EOS)
    assert set(b) == {"input_ids", "labels", "instance_mask", "index"}
    assert b["input_ids"].dtype == torch.long and b["labels"].dtype == torch.long
    assert torch.equal(b["labels"], b["input_ids"])  # unshifted; the loop shifts
    assert sorted(b["index"].tolist()) == [0, 1] and b["instance_mask"].all()
    with pytest.raises(TypeError):
        Loader.from_paths(str(tmp_path), T, 2, doc_masking=True)  # the unused option is gone
    with pytest.raises(DataError, match="multiple of world_size"):
        Loader.from_paths(str(tmp_path), T, 3, world_size=2)
    with pytest.raises(DataError, match="fewer than one global batch"):
        Loader.from_paths(str(tmp_path), T, 4)


def test_repetition_filter_masks_labels(tmp_path):
    rng = np.random.default_rng(0)
    normal = rng.integers(100, 5000, size=64)
    rep = np.concatenate([rng.integers(100, 5000, size=10), np.tile([7, 8], 27)])  # 27 x p2: not enough alone
    rep[30:62] = 7  # 32 x period 1
    np.save(tmp_path / "a.npy", np.concatenate([normal, rep[:64]]).astype(np.uint32))
    loader = Loader.from_paths(str(tmp_path), 64, 2, seed=0)
    b = next(iter(loader))
    for i, row_idx in enumerate(b["index"].tolist()):
        masked = row_idx == 1
        assert bool(b["instance_mask"][i]) is (not masked)
        assert (b["labels"][i] == -100).all().item() is masked
        assert b["input_ids"][i].shape == (64,)  # not dropped
    off = Loader.from_paths(str(tmp_path), 64, 2, seed=0, repetition_filter=False)
    assert bool(next(iter(off))["instance_mask"].all())


def test_repetition_vectorised_matches_bruteforce_random():
    rng = np.random.default_rng(1)
    for vocab, length, maxp, count in ((2, 40, 4, 4), (3, 60, 5, 4), (2, 30, 3, 6), (4, 50, 6, 3)):
        x = rng.integers(0, vocab, size=(150, length))
        fast = repetitive_rows(x, 1, maxp, count)
        slow = [is_repetitive_bruteforce(r, 1, maxp, count) for r in x]
        assert fast.tolist() == slow
        assert 0 < fast.sum() < len(x) or vocab == 2  # the cases exercise both outcomes


def _noise(rng, n):
    return list(rng.permutation(np.arange(1000, 1000 + n)))  # no repeats at all


def test_repetition_crafted_defaults():
    rng = np.random.default_rng(2)
    cases = {
        "p1x32": (_noise(rng, 20) + [5] * 32 + _noise(rng, 20), True),
        "p1x31": (_noise(rng, 20) + [5] * 31 + _noise(rng, 20), False),
        "p3x32_unaligned": (_noise(rng, 7) + [1, 2, 3] * 32 + _noise(rng, 5), True),
        "p3x31+2": (_noise(rng, 7) + [1, 2, 3] * 31 + [1, 2] + _noise(rng, 5), False),
        "p13x32_at_end": (_noise(rng, 3) + list(range(13)) * 32, True),
        "p14x40": (list(range(14)) * 40, False),  # period above 13 is allowed
        "p2x16": ([4, 4] * 16 + _noise(rng, 10), True),  # = period 1 x 32
    }
    for name, (row, want) in cases.items():
        assert is_repetitive_bruteforce(row) is want, name
        assert bool(repetitive_rows(np.array(row))[0]) is want, name
