"""Token-shard format: uint32 `.npy` token files, per-shard document index, metadata.

Layout of a directory written by `olmo2 data tokenize` (one concern: what is on disk):

    DIR/f00012-00003.npy        uint32 tokens, 1-D, plain numpy .npy (np.load(mmap_mode='r'))
    DIR/f00012-00003.idx.npy    uint64 document start offsets, length docs+1 (last = tokens)
    DIR/f00012-00003.json       shard record: the commit marker, written last, atomically
    DIR/f00012.done.json        input-file record: all shards of input file #12 are complete
    DIR/metadata.json           summary of the whole run (or metadata.part-00003-of-00008.json
                                when the inputs were split with --num-shards/--shard-index)

`f00012` is the index of the input file in the *sorted, de-duplicated* list of all inputs
(before --num-shards splitting), so every input file maps to a fixed set of shard names and
a job array can write all parts into one directory without collisions.

Footguns:
- A shard is complete only if its `.json` record exists and the `.npy` has the recorded
  token count. Deleting a `.npy` makes the next `tokenize` run redo just that shard.
- `.idx.npy` files also end in `.npy`: use `list_shards()` rather than a bare `*.npy` glob.
- A directory written by a job array is read only when every part's metadata file is there
  (`check_parts_complete`): until then `load_metadata`/`list_shards`/the loader refuse it and
  name the missing --shard-index values.
- Token files are written streaming, with a fixed 128-byte npy header that is patched with
  the real length at the end, so memory stays constant however large a shard is.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from olmo2.errors import DataError
from olmo2.fsio import atomic_file, naming_write_errors

FORMAT_VERSION = 1
TOKEN_DTYPE = np.uint32
_NPY_HEADER_LEN = 128  # magic(6) + version(2) + header_len(2) + dict padded to 118 bytes


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _npy_header(n_tokens: int) -> bytes:
    d = "{'descr': '<u4', 'fortran_order': False, 'shape': (%d,), }" % n_tokens
    body_len = _NPY_HEADER_LEN - 10
    d = d.ljust(body_len - 1) + "\n"
    return b"\x93NUMPY" + bytes([1, 0]) + struct.pack("<H", body_len) + d.encode("latin1")


class ShardWriter:
    """Streams token arrays into one `.npy` + `.idx.npy` + `.json` shard; call .close().

    Usage: `w = ShardWriter(base); w.add_doc(ids_with_eos); w.close(record_extra)`.
    Nothing is visible under the final names until close() succeeds.
    """

    def __init__(self, base: str | os.PathLike):
        self.base = str(base)
        self._ctx = atomic_file(self.base + ".npy", "wb")
        self._f = self._ctx.__enter__()
        self._f.write(_npy_header(0))
        self.n_tokens = 0
        self.doc_starts: list[int] = []

    def add_doc(self, ids: np.ndarray) -> None:
        """Append one document (already ending in EOS)."""
        self.doc_starts.append(self.n_tokens)
        arr = np.ascontiguousarray(ids, dtype="<u4")
        with naming_write_errors(self.base + ".npy"):  # a bare f.write error names no file
            self._f.write(arr.tobytes())
        self.n_tokens += int(arr.size)

    def close(self, record: dict) -> dict:
        """Finish the token file, write the index and the record (commit marker); return it."""
        with naming_write_errors(self.base + ".npy"):
            self._f.seek(0)
            self._f.write(_npy_header(self.n_tokens))
            self._f.seek(0, os.SEEK_END)
            self._f.flush()
        self._ctx.__exit__(None, None, None)
        idx = np.asarray(self.doc_starts + [self.n_tokens], dtype=np.uint64)
        with atomic_file(self.base + ".idx.npy", "wb") as f:
            np.save(f, idx)
        rec = dict(record, name=Path(self.base).name, tokens=self.n_tokens,
                   docs=len(self.doc_starts))
        write_json(self.base + ".json", rec)
        return rec

    def abort(self) -> None:
        """Drop the partial shard (nothing under the final name is touched)."""
        err = DataError("shard aborted")
        self._ctx.__exit__(DataError, err, None)


def write_json(path: str | os.PathLike, obj) -> None:
    """Atomically write pretty JSON."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def read_json(path: str | os.PathLike):
    """Read JSON, or raise DataError naming the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read JSON ({e}); delete it and rerun tokenize") from e


def shard_complete(base: str | os.PathLike) -> dict | None:
    """The shard's record if `base`.json/.npy/.idx.npy are all present and consistent."""
    base = str(base)
    rec_path = base + ".json"
    if not (os.path.exists(rec_path) and os.path.exists(base + ".npy")
            and os.path.exists(base + ".idx.npy")):
        return None
    try:
        with open(rec_path) as f:
            rec = json.load(f)
        if os.path.getsize(base + ".npy") != _NPY_HEADER_LEN + 4 * int(rec["tokens"]):
            return None
    except (OSError, ValueError, KeyError):
        return None
    return rec


def open_tokens(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a token shard (1-D uint32)."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npy token shard ({e})") from e
    if arr.ndim != 1 or arr.dtype != TOKEN_DTYPE:
        raise DataError(f"{path}: expected a 1-D uint32 token array, got {arr.dtype}{arr.shape}")
    return arr


def num_tokens(path: str | os.PathLike) -> int:
    """Token count of a shard from its header (cheap)."""
    return int(open_tokens(path).shape[0])


def read_doc_index(shard_path: str | os.PathLike) -> np.ndarray:
    """Document start offsets (uint64, length docs+1) of a shard."""
    p = str(shard_path)
    idx = p[:-4] + ".idx.npy" if p.endswith(".npy") else p + ".idx.npy"
    return np.load(idx)


def list_shards(spec: str | os.PathLike | Iterable) -> list[str]:
    """Sorted token-shard paths from a dir, a glob, a file, or a list of those.

    A dir with metadata*.json yields the shards its metadata lists; other dirs are searched
    recursively for *.npy (index files excluded).
    """
    if isinstance(spec, (list, tuple)):
        out: list[str] = []
        for s in spec:
            out.extend(list_shards(s))
        return sorted(dict.fromkeys(out))
    spec = os.fspath(spec)
    if os.path.isdir(spec) and glob.glob(os.path.join(spec, "metadata*.json")):
        # A tokenize output dir: only the shards of finished runs, never half-done files.
        return sorted(s["path"] for s in load_metadata(spec)["shards"])
    if os.path.isdir(spec):
        found = glob.glob(os.path.join(spec, "**", "*.npy"), recursive=True)
    elif any(c in spec for c in "*?["):
        found = []
        for p in glob.glob(spec, recursive=True):
            found.extend(list_shards(p) if os.path.isdir(p) else [p])
    elif os.path.exists(spec):
        found = [spec]
    else:
        raise DataError(f"{spec}: no such token shard, directory or glob")
    return sorted(p for p in found if p.endswith(".npy") and not p.endswith(".idx.npy"))


# ---------------------------------------------------------------- metadata

def metadata_name(shard_index: int, num_shards: int) -> str:
    """`metadata.json`, or `metadata.part-IIIII-of-NNNNN.json` for one part of a job array."""
    if num_shards <= 1:
        return "metadata.json"
    return f"metadata.part-{shard_index:05d}-of-{num_shards:05d}.json"


def merge_metadata(metas: list[dict]) -> dict:
    """Combine metadata dicts of several parts / dirs; they must share one tokenizer."""
    if not metas:
        raise DataError("no metadata to merge")
    shas = {m["tokenizer"]["sha256"] for m in metas}
    eos = {m["eos_id"] for m in metas}
    if len(shas) > 1 or len(eos) > 1:
        raise DataError(f"cannot merge token data made with different tokenizers/eos ids: "
                        f"{sorted(shas)} eos {sorted(eos)}; retokenize with one tokenizer")
    out = {k: v for k, v in metas[0].items()
           if k not in ("sources", "shards", "part", "dir")}
    out["parts"] = [dict(m.get("part", {}), dir=m.get("dir")) for m in metas]
    out["sources"] = [s for m in metas for s in m["sources"]]
    out["shards"] = [s for m in metas for s in m["shards"]]
    for key in ("total_tokens", "total_docs", "malformed_lines"):
        out[key] = sum(int(m.get(key, 0)) for m in metas)
    return out


def load_metadata(dirs: str | os.PathLike | Iterable) -> dict:
    """Read and merge every metadata*.json in one or more tokenize output directories.

    Shard `path`s in the result are absolute, so shards from several dirs can be loaded.
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    metas = []
    for d in dirs:
        files = sorted(glob.glob(os.path.join(os.fspath(d), "metadata*.json")))
        if not files:
            raise DataError(f"{d}: no metadata.json; run `olmo2 data tokenize ... --out {d}` "
                            f"to completion first")
        here = []
        for fpath in files:
            m = read_json(fpath)
            m["dir"] = os.path.abspath(d)
            for s in m["shards"]:
                s["path"] = os.path.join(m["dir"], s["name"] + ".npy")
            here.append(m)
        check_parts_complete(d, here)
        metas.extend(here)
    return merge_metadata(metas)


def check_parts_complete(d: str | os.PathLike, metas: list[dict]) -> None:
    """Raise DataError unless `metas` (one dir's metadata files) hold every part of one split.

    A job array writes one metadata file per part; a directory read while some parts are
    still running (or after one failed) would otherwise train on a silently partial corpus.
    """
    counts = {int(m.get("part", {}).get("count", 1)) for m in metas}
    if len(counts) > 1:
        raise DataError(f"{d}: holds metadata from runs with different --num-shards "
                        f"({', '.join(map(str, sorted(counts)))}); tokenize into a fresh --out")
    n = counts.pop()
    have = {int(m.get("part", {}).get("index", 0)) for m in metas}
    missing = [i for i in range(n) if i not in have]
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise DataError(f"{d}: has {n - len(missing)} of {n} parts; missing --shard-index {shown} "
                        f"({metadata_name(missing[0], n)}); run those `olmo2 data tokenize "
                        f"--num-shards {n} --shard-index I` parts to completion first")


def check_tokenizer(meta: dict, tokenizer_path_or_sha: str | os.PathLike) -> None:
    """Raise DataError unless `meta` was tokenized with this tokenizer.json (path or sha256)."""
    want = os.fspath(tokenizer_path_or_sha)
    if os.path.isdir(want):
        want = os.path.join(want, "tokenizer.json")
    if os.path.exists(want):
        want_sha, label = sha256_file(want), want
    else:
        want_sha, label = want.lower(), f"sha256 {want[:12]}"
    have = meta["tokenizer"]["sha256"]
    if have != want_sha:
        raise DataError(
            f"token data was made with tokenizer sha256 {have[:12]} "
            f"({meta['tokenizer'].get('path', '?')}) but {label} has sha256 {want_sha[:12]}; "
            f"retokenize the data or use the matching tokenizer")
