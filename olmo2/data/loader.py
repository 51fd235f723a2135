"""Pretraining data loader matching the OLMo trainer (memmap dataset + iterable dataset).

    from olmo2.data.loader import Loader
    loader = Loader.from_dirs(["tok/"], seq_len=4096, global_batch_size=512, seed=6198,
                              rank=r, world_size=w, tokenizer="tokenizer.json")
    for batch in loader: ...                 # batch["input_ids"], batch["labels"]: [B_local, T]
    ckpt["data"] = loader.state_dict()       # {"epoch", "step", ...}; load_state_dict() resumes

Instances: every shard (uint32 .npy) is cut into `seq_len`-token instances read contiguously;
instances never cross a shard boundary and the tail of each shard (< seq_len tokens) is
dropped. Instances are numbered shard by shard in sorted path order (for a `Mix`: source by
source in mix order, after deterministic up/down-sampling, see `olmo2.data.mix`).

Order: epoch e uses `np.random.Generator(np.random.PCG64(seed + e)).shuffle(arange(N))`, as
the OLMo trainer (uint32 arange when N < 2**32). Step s of the epoch is the global batch
`order[s*G:(s+1)*G]` (G = global_batch_size); the incomplete last global batch is dropped.

Ranks: rank r of w gets the *strided* slice `global_batch[r::w]` (OLMo's
`indices[rank::world_size]`), so ranks are disjoint and together cover the global batch.
G must be divisible by w; each rank gets B_local = G / w instances per step and splits them
into micro-batches itself.

Batch format (all torch tensors, CPU):
- `input_ids`  LongTensor [B_local, T]  the instance tokens, exactly `seq_len`.
- `labels`     LongTensor [B_local, T]  **unshifted**: labels[:, t] == input_ids[:, t], or -100
  for the whole row if the repetition filter fired. The training loop shifts:
  loss = CE(logits[:, :-1], labels[:, 1:]).
- `instance_mask` BoolTensor [B_local]  False where the repetition filter masked the row.
- `index`      LongTensor [B_local]  global instance ids (debugging / exact-resume checks).
No document masking: as in OLMo 2 pretraining, attention crosses the EOS between documents
(facts §3), so the batch carries no document ids or varlen boundaries.

Resume: the state is (epoch, step) plus a fingerprint of the dataset and settings;
iterating after `load_state_dict(sd)` yields exactly what the uninterrupted run yielded from
that step on. Footguns: call `iter(loader)` anew after load_state_dict; with the default
`num_epochs=None` iteration never ends (epoch e+1 follows epoch e), so the training loop
stops it by step count; pass `num_epochs=1` to get a finite iterator.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from olmo2.data.mix import Mix, sample_instances, source_seed
from olmo2.data.repetition import MAX_COUNT, MAX_PERIOD, MIN_PERIOD, repetitive_rows
from olmo2.data.shards import check_tokenizer, list_shards, load_metadata, num_tokens, open_tokens
from olmo2.errors import DataError


@dataclass
class _Segment:
    name: str
    shards: list[str]
    cum: np.ndarray            # [n_shards+1] cumulative natural instance counts
    ids: np.ndarray | None     # sampled local instance ids, or None = arange(cum[-1])

    def __len__(self) -> int:
        return int(self.cum[-1]) if self.ids is None else int(self.ids.size)


class TokenDataset:
    """Fixed-length instances over token shards, grouped in named segments (mix sources)."""

    def __init__(self, segments: list[_Segment], seq_len: int):
        self.segments, self.seq_len = segments, seq_len
        self.seg_cum = np.cumsum([0] + [len(s) for s in segments]).astype(np.int64)
        self._mmaps: dict[str, np.ndarray] = {}

    @staticmethod
    def _segment(name: str, shards: list[str], seq_len: int, ids_fn=None) -> _Segment:
        counts = [num_tokens(p) // seq_len for p in shards]
        cum = np.cumsum([0] + counts).astype(np.int64)
        return _Segment(name, list(shards), cum, ids_fn(int(cum[-1])) if ids_fn else None)

    @classmethod
    def from_paths(cls, paths, seq_len: int) -> "TokenDataset":
        """All instances of the shards under `paths` (dirs, globs, files), sorted by path."""
        shards = list_shards(paths)
        if not shards:
            raise DataError(f"no token shards found under {paths}")
        return cls([cls._segment("all", shards, seq_len)], seq_len)

    @classmethod
    def from_mix(cls, mix: Mix, seq_len: int) -> "TokenDataset":
        """Instances of each mix source, up/down-sampled to its target."""
        segs = []
        for src in mix.sources:
            ids_fn = None
            if src.target_tokens is not None:
                target, seed = src.target_tokens // seq_len, source_seed(mix.seed, src.name)
                ids_fn = lambda n, t=target, s=seed: sample_instances(n, t, s)  # noqa: E731
            segs.append(cls._segment(src.name, src.shards(), seq_len, ids_fn))
        return cls(segs, seq_len)

    def __len__(self) -> int:
        return int(self.seg_cum[-1])

    def composition(self) -> dict[str, dict]:
        """Per segment: instances available, instances used, share of the dataset."""
        n = max(1, len(self))
        return {s.name: {"available": int(s.cum[-1]), "instances": len(s),
                         "tokens": len(s) * self.seq_len, "fraction": len(s) / n}
                for s in self.segments}

    def fingerprint(self) -> str:
        """Hash of segment names, shard names/sizes and sampled counts (for resume checks)."""
        desc = [(s.name, [os.path.basename(p) for p in s.shards], s.cum.tolist(), len(s))
                for s in self.segments]
        return hashlib.sha256(json.dumps([self.seq_len, desc]).encode()).hexdigest()[:16]

    def _tokens(self, path: str) -> np.ndarray:
        arr = self._mmaps.get(path)
        if arr is None:
            arr = self._mmaps[path] = open_tokens(path)
        return arr

    def locate(self, idx: int) -> tuple[str, int]:
        """(shard path, token offset) of global instance `idx`."""
        if not 0 <= idx < len(self):
            raise IndexError(idx)
        si = int(np.searchsorted(self.seg_cum, idx, side="right")) - 1
        seg = self.segments[si]
        local = idx - int(self.seg_cum[si])
        if seg.ids is not None:
            local = int(seg.ids[local])
        sh = int(np.searchsorted(seg.cum, local, side="right")) - 1
        return seg.shards[sh], (local - int(seg.cum[sh])) * self.seq_len

    def __getitem__(self, idx: int) -> np.ndarray:
        path, off = self.locate(int(idx))
        return np.asarray(self._tokens(path)[off:off + self.seq_len])

    def get_many(self, indices) -> np.ndarray:
        """int64 [len(indices), seq_len] token rows."""
        out = np.empty((len(indices), self.seq_len), dtype=np.int64)
        for i, idx in enumerate(indices):
            out[i] = self[idx]
        return out


class Loader:
    """Deterministic, rank-aware, resumable iterator of pretraining batches (see module doc)."""

    def __init__(self, dataset: TokenDataset, global_batch_size: int, seed: int = 0, *,
                 rank: int = 0, world_size: int = 1, repetition_filter: bool = True,
                 num_epochs: int | None = None):
        if global_batch_size < 1 or global_batch_size % world_size:
            raise DataError(f"global_batch_size {global_batch_size} must be a positive "
                            f"multiple of world_size {world_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} must be in [0, world_size {world_size})")
        self.dataset, self.seq_len = dataset, dataset.seq_len
        self.global_batch_size, self.seed = global_batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.repetition_filter = repetition_filter
        self.num_epochs = num_epochs
        self.steps_per_epoch = len(dataset) // global_batch_size
        if self.steps_per_epoch == 0:
            raise DataError(f"dataset has {len(dataset)} instances of {self.seq_len} tokens, "
                            f"fewer than one global batch ({global_batch_size})")
        self.epoch, self.step = 0, 0
        self.metadata: dict | None = None  # set by from_dirs
        self._order_cache: tuple[int, np.ndarray] | None = None

    # ---- constructors
    @classmethod
    def from_paths(cls, paths, seq_len: int, global_batch_size: int, seed: int = 0, **kw) -> "Loader":
        """Loader over token shards (dirs, globs or files, e.g. `data tokenize` outputs)."""
        return cls(TokenDataset.from_paths(paths, seq_len), global_batch_size, seed, **kw)

    @classmethod
    def from_dirs(cls, dirs, seq_len: int, global_batch_size: int, seed: int = 0,
                  tokenizer: str | None = None, **kw) -> "Loader":
        """Loader over the shards listed in the metadata of `data tokenize` output dirs.

        `tokenizer` (a tokenizer.json path or sha256) is checked against the metadata.
        """
        meta = load_metadata(dirs)
        if tokenizer is not None:
            check_tokenizer(meta, tokenizer)
        paths = [s["path"] for s in meta["shards"]]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise DataError(f"{missing[0]}: shard listed in metadata is missing; rerun tokenize")
        loader = cls(TokenDataset.from_paths(paths, seq_len), global_batch_size, seed, **kw)
        loader.metadata = meta
        return loader

    @classmethod
    def from_mix(cls, mix: Mix, seq_len: int, global_batch_size: int, seed: int = 0, **kw) -> "Loader":
        """Loader over a `Mix` (per-source sampling seeded by mix.seed, order by `seed`)."""
        return cls(TokenDataset.from_mix(mix, seq_len), global_batch_size, seed, **kw)

    # ---- order
    def global_order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of instance ids: PCG64(seed + epoch).shuffle(arange(N))."""
        if self._order_cache and self._order_cache[0] == epoch:
            return self._order_cache[1]
        n = len(self.dataset)
        order = np.arange(n, dtype=np.uint32 if n < 2**32 else np.uint64)
        np.random.Generator(np.random.PCG64(self.seed + epoch)).shuffle(order)
        self._order_cache = (epoch, order)
        return order

    def indices(self, epoch: int, step: int) -> np.ndarray:
        """This rank's global instance ids for (epoch, step)."""
        g = self.global_order(epoch)[step * self.global_batch_size:(step + 1) * self.global_batch_size]
        return g[self.rank::self.world_size].astype(np.int64)

    # ---- batches
    def make_batch(self, idx: np.ndarray) -> dict:
        """Batch dict for the given global instance ids (see module doc)."""
        x = self.dataset.get_many(idx)
        keep = ~repetitive_rows(x, MIN_PERIOD, MAX_PERIOD, MAX_COUNT) if self.repetition_filter \
            else np.ones(len(idx), dtype=bool)
        labels = x.copy()
        labels[~keep] = -100
        batch = {"input_ids": torch.from_numpy(x), "labels": torch.from_numpy(labels),
                 "instance_mask": torch.from_numpy(keep), "index": torch.from_numpy(idx)}
        return batch

    def __iter__(self) -> Iterator[dict]:
        while self.num_epochs is None or self.epoch < self.num_epochs:
            while self.step < self.steps_per_epoch:
                idx = self.indices(self.epoch, self.step)
                self.step += 1
                yield self.make_batch(idx)
            self.epoch, self.step = self.epoch + 1, 0

    # ---- resume
    def state_dict(self) -> dict:
        """(epoch, step) of the next batch, plus what must match on resume."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "seq_len": self.seq_len,
                "num_instances": len(self.dataset), "fingerprint": self.dataset.fingerprint()}

    def load_state_dict(self, sd: dict) -> None:
        """Continue from a saved state; DataError if the data or batch settings changed."""
        for k in ("seed", "global_batch_size", "seq_len", "num_instances", "fingerprint"):
            mine = self.state_dict()[k]
            if k in sd and sd[k] != mine:
                raise DataError(f"data loader state does not match: {k} was {sd[k]}, now {mine}; "
                                f"use the same data and batch settings to resume")
        self.epoch, self.step = int(sd["epoch"]), int(sd["step"])
