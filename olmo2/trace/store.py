"""Open a trace index for querying: memory-mapped suffix arrays and token shards, checked.

`open_index(INDEX)` reads `index.json`, every committed `shards/*/manifest.json`, and maps
each shard's `sa.npy` and the token `.npy` it was built from. Every mismatch is a one-line
`DataError` naming the file and what to do: a missing or changed token shard (size +
sampled-block fingerprint, see `index.fingerprint`), a truncated or rewritten `sa.npy`, a
tokenizer.json that is not the one the index was built with, shards of different tokenizers.

Footgun: the fingerprint samples 16 blocks of 64 KiB, so an edit of a few bytes in a large
shard between the sampled blocks goes unnoticed; `open_index(..., full_check=True)`
(`olmo2 trace query --verify`) compares whole-file sha256s instead.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from olmo2.data.shards import open_tokens, read_json, sha256_file
from olmo2.errors import DataError
from olmo2.trace.index import INDEX_FORMAT, INDEX_VERSION, fingerprint


@dataclass
class ShardIndex:
    """One indexed shard: its tokens and suffix array (both memory-mapped) and doc metadata."""

    key: str
    name: str
    path: str
    tokens: np.ndarray        # uint32, memory-mapped shard
    sa: np.ndarray            # int32/int64, memory-mapped
    unigram: np.ndarray       # uint64 [vocab]
    doc_starts: np.ndarray    # uint64 [docs + 1]
    dir: Path
    _labels: list | None = None
    _doc_label: np.ndarray | None = None
    _ids: tuple | None = None
    cum: np.ndarray = field(default=None)  # int64 [vocab + 1]: SA range of each first token

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])

    def doc_of(self, pos: int) -> int:
        """Index of the document containing token offset `pos`."""
        return int(np.searchsorted(self.doc_starts, pos, side="right")) - 1

    def doc_info(self, doc: int) -> tuple[str, str, str]:
        """(source, doc id, licence) of document `doc`."""
        if self._labels is None:
            self._labels = read_json(self.dir / "labels.json")
            self._doc_label = np.load(self.dir / "doc_label.npy", mmap_mode="r")
            self._ids = (np.load(self.dir / "doc_ids_off.npy", mmap_mode="r"),
                         np.memmap(self.dir / "doc_ids.bin", dtype=np.uint8, mode="r")
                         if os.path.getsize(self.dir / "doc_ids.bin") else np.zeros(0, np.uint8))
        src, lic = self._labels[int(self._doc_label[doc])]
        off, blob = self._ids
        doc_id = bytes(blob[int(off[doc]):int(off[doc + 1])]).decode("utf-8", "replace")
        return src, doc_id, lic


@dataclass
class TraceIndex:
    """All shards of an index, the tokenizer to query with, and corpus unigram counts."""

    path: Path
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    shards: list[ShardIndex]
    unigram: np.ndarray  # uint64 [vocab], summed over shards
    _tokenizer: object = None

    @property
    def total_tokens(self) -> int:
        return int(sum(s.n for s in self.shards))

    @property
    def tokenizer(self):
        """The index's `tokenizers.Tokenizer` (the one its shards were made with)."""
        if self._tokenizer is None:
            from olmo2.tokenizer import Tokenizer  # the one loading path
            self._tokenizer = Tokenizer.from_file(self.path / "tokenizer.json", eos_id=self.eos_id).tk
        return self._tokenizer


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise DataError(msg)


def _open_shard(d: Path, head: dict, full_check: bool) -> ShardIndex:
    m = read_json(d / "manifest.json")
    rebuild = f"rerun `olmo2 trace index` (it rebuilds changed shards) or delete {d}"
    _check(m.get("format") == INDEX_FORMAT and m.get("version") == INDEX_VERSION,
           f"{d / 'manifest.json'}: not a version-{INDEX_VERSION} trace index shard; {rebuild}")
    _check(m.get("tokenizer_sha256") == head["tokenizer_sha256"],
           f"{d / 'manifest.json'}: shard indexed with tokenizer sha256 "
           f"{str(m.get('tokenizer_sha256'))[:12]}, the index uses "
           f"{head['tokenizer_sha256'][:12]}; delete {d} or use a fresh index")
    sp = m["shard_path"]
    _check(os.path.exists(sp), f"{sp}: token shard of index entry {d.name} is missing; restore "
                               f"it or rebuild the index")
    if full_check:
        _check(sha256_file(sp) == m["shard_sha256"],
               f"{sp}: token shard changed since it was indexed (sha256); {rebuild}")
    else:
        _check(fingerprint(sp) == m["shard_fingerprint"],
               f"{sp}: token shard changed since it was indexed (size/fingerprint); {rebuild}")
    sa_path = d / "sa.npy"
    _check(sa_path.exists() and fingerprint(sa_path) == m["sa_fingerprint"],
           f"{sa_path}: suffix array is missing, truncated or corrupt; {rebuild}")
    tokens = open_tokens(sp)
    try:
        sa = np.load(sa_path, mmap_mode="r")
        unigram = np.load(d / "unigram.npy")
        doc_starts = np.load(sp[:-4] + ".idx.npy")
    except (OSError, ValueError) as e:
        raise DataError(f"{d}: unreadable index file ({e}); {rebuild}") from e
    _check(sa.shape == (m["tokens"],) and tokens.shape == (m["tokens"],)
           and unigram.shape == (head["vocab_size"],) and int(doc_starts[-1]) == m["tokens"],
           f"{d}: index files disagree with the manifest ({m['tokens']} tokens); {rebuild}")
    cum = np.zeros(head["vocab_size"] + 1, dtype=np.int64)
    np.cumsum(unigram, out=cum[1:])
    # Plain ndarray views of the maps: same pages, without np.memmap's per-index overhead
    # (a third of the query time in a profile of many small fancy-index reads).
    tokens, sa = tokens.view(np.ndarray), sa.view(np.ndarray)
    return ShardIndex(key=m["key"], name=m["shard_name"], path=sp, tokens=tokens, sa=sa,
                      unigram=unigram, doc_starts=doc_starts, dir=d, cum=cum)


def open_index(path: str | os.PathLike, full_check: bool = False) -> TraceIndex:
    """Open and check an index directory written by `olmo2 trace index`."""
    path = Path(path)
    ij = path / "index.json"
    _check(ij.is_file(), f"{path}: not a trace index (no index.json); build one with "
                         f"`olmo2 trace index DATA_DIR --out {path}`")
    try:
        head = json.loads(ij.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{ij}: unreadable ({e}); rebuild the index") from e
    _check(head.get("format") == INDEX_FORMAT and head.get("version") == INDEX_VERSION,
           f"{ij}: not a version-{INDEX_VERSION} {INDEX_FORMAT}; rebuild it with this olmo2")
    tj = path / "tokenizer.json"
    _check(tj.is_file() and sha256_file(tj) == head["tokenizer_sha256"],
           f"{tj}: missing or not the tokenizer this index was built with (want sha256 "
           f"{head['tokenizer_sha256'][:12]}); rebuild the index")
    dirs = sorted(p for p in (path / "shards").glob("*")
                  if not p.name.startswith(".") and (p / "manifest.json").is_file())
    _check(bool(dirs), f"{path}: the index has no finished shards; run `olmo2 trace index`")
    shards = [_open_shard(d, head, full_check) for d in dirs]
    unigram = np.sum([s.unigram for s in shards], axis=0, dtype=np.uint64)
    return TraceIndex(path=path, tokenizer_sha256=head["tokenizer_sha256"],
                      vocab_size=int(head["vocab_size"]), eos_id=int(head["eos_id"]),
                      shards=shards, unigram=unigram)
