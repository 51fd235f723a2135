"""`olmo2 trace index`: build a suffix-array index over `olmo2 data tokenize` shards.

    olmo2 trace index tok/demo --out trace-idx
    # a large corpus as a job array (all parts may write into one --out; queries combine them):
    olmo2 trace index tok/dclm --out idx/ --num-parts 64 --part-index $SLURM_ARRAY_TASK_ID

Layout of INDEX (one sub-directory per token shard, committed atomically, so a killed build
leaves only complete shard indexes and a rerun builds just the missing ones):

    INDEX/index.json                 tokenizer sha256 / vocab / eos: every shard must share it
    INDEX/tokenizer.json             copy of the tokenizer the shards were made with
    INDEX/shards/<key>/manifest.json the commit marker: shard path, size, fingerprint, sha256,
                                     tokens, docs, SA dtype, build time
    INDEX/shards/<key>/sa.npy        suffix array of the shard's token array (int32, or int64
                                     for shards of >= 2^31 tokens), sorted token-wise
    INDEX/shards/<key>/unigram.npy   uint64 count of every token id in the shard
    INDEX/shards/<key>/doc_label.npy uint32 per document: row of labels.json
    INDEX/shards/<key>/labels.json   distinct [source, licence] pairs of the shard's documents
    INDEX/shards/<key>/doc_ids.bin / doc_ids_off.npy   per-document ids (utf-8 blob + offsets)

The tokens themselves are not copied: queries memory-map the shard `.npy` in place, and the
manifest's fingerprint catches a shard that changed after indexing.

Suffix-array construction is libdivsufsort (`pydivsufsort`, C). It sorts bytes only
(pydivsufsort's own integer support widens ids to a power-of-two byte width), so each token
is written as a fixed-width big-endian integer of ceil(bits(vocab-1)/8) bytes (2 for the demo
BPE, 3 for dolma2's 100k vocab); lexicographic order of such byte strings equals token-wise
order, and keeping only the suffixes that start at multiples of the width gives exactly the
token-level suffix array. Cost: the byte SA is width x larger while it is built (peak memory
about (5·width + 4) bytes per token with int32 offsets), so keep shards under ~700M tokens
(the tokenize default is 100M) to stay on libdivsufsort's 32-bit path.

Document boundaries need no special handling here: each document ends in EOS and a query
never contains EOS, so no match can run across one; shards are separate arrays, so no match
runs across a shard boundary either.

Source/licence: for `.jsonl` inputs the builder re-reads the shard's line range and takes each
record's `source`/`id`/`license` fields; a `manifest.json` beside the input (the demo corpus
has one) supplies per-source licences. Missing or changed inputs give source = the file name
and licence "unknown" rather than failing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from olmo2.data.shards import load_metadata, open_tokens, read_doc_index, read_json, sha256_file, \
    write_json
from olmo2.errors import DataError
from olmo2.fsio import atomic_dir, atomic_file
from olmo2.progress import Progress

INDEX_FORMAT = "olmo2-trace-index"
INDEX_VERSION = 1
_FP_BLOCKS, _FP_BLOCK = 16, 1 << 16


@dataclass(frozen=True)
class BuildSummary:
    """What one `build_index` run did."""

    out: str
    shards_total: int
    shards_built: int
    shards_skipped: int
    tokens_built: int
    seconds: float
    index_bytes: int  # bytes of the shard indexes built in this run (tokens not counted)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_built / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_token(self) -> float:
        return self.index_bytes / self.tokens_built if self.tokens_built else 0.0


def fingerprint(path: str | os.PathLike) -> str:
    """Cheap content fingerprint: size + sha256 of 16 evenly spaced 64 KiB blocks.

    Whole-file sha256 of every shard on every query would cost seconds per GB; the sampled
    blocks catch truncation, regeneration and in-place edits of any file up to 1 MiB (read
    whole) and most edits of larger ones. The full sha256 is kept in the manifest too.
    """
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _FP_BLOCKS * _FP_BLOCK:
            h.update(f.read())
        else:
            step = (size - _FP_BLOCK) // (_FP_BLOCKS - 1)
            for i in range(_FP_BLOCKS):
                f.seek(i * step)
                h.update(f.read(_FP_BLOCK))
    return f"{size}:{h.hexdigest()[:32]}"


def token_width(vocab_size: int) -> int:
    """Bytes per token in the big-endian encoding fed to libdivsufsort."""
    return max(1, ((max(1, vocab_size - 1)).bit_length() + 7) // 8)


def _encode_be(tokens: np.ndarray, width: int) -> np.ndarray:
    """uint32 tokens -> uint8 array, `width` big-endian bytes per token."""
    be = tokens.astype(">u4").view(np.uint8).reshape(-1, 4)
    return np.ascontiguousarray(be[:, 4 - width:]).reshape(-1)


def suffix_array(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Token-level suffix array of a uint32 array (libdivsufsort over fixed-width bytes)."""
    from pydivsufsort import divsufsort

    n = int(tokens.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    width = token_width(vocab_size)
    raw = _encode_be(tokens, width)
    byte_sa = divsufsort(raw)
    del raw
    out_dtype = np.int32 if n < 2**31 else np.int64
    if width == 1:
        return byte_sa.astype(out_dtype, copy=False)
    out = np.empty(n, dtype=out_dtype)
    filled, chunk = 0, 1 << 24
    # Filter in chunks so the boolean mask never costs another full-size temporary.
    for a in range(0, byte_sa.shape[0], chunk):
        part = byte_sa[a:a + chunk]
        keep = part[part % width == 0] // width
        out[filled:filled + keep.shape[0]] = keep
        filled += keep.shape[0]
    assert filled == n, (filled, n)
    return out


# ---------------------------------------------------------------- document labels

def _source_licences(source_path: str) -> dict[str, str]:
    """{source name: licence} from a manifest.json beside the input (the demo corpus has one)."""
    p = Path(source_path).parent / "manifest.json"
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
        return {k: str(v.get("license", "unknown")) for k, v in m.get("sources", {}).items()
                if isinstance(v, dict)}
    except (OSError, ValueError, AttributeError):
        return {}


class _LabelReader:
    """Per-document (source, id, licence) of an input file, one file held at a time."""

    def __init__(self):
        self.text_field = "text"
        self._path: tuple[str, str] | None = None
        self._rows: list[tuple[int, str, str, str]] | None = None

    def _load(self, path: str, sha: str | None) -> list[tuple[int, str, str, str]] | None:
        from olmo2.data.tokenize import _open_decompressed, input_kind
        try:
            kind, comp = input_kind(path)
            if kind != "jsonl" or not os.path.isfile(path) or (sha and sha256_file(path) != sha):
                return None
        except DataError:
            return None
        licences = _source_licences(path)
        rows = []
        # The same record filter as tokenize.iter_documents, so rows line up with documents.
        with open(path, "rb") as raw:
            f = _open_decompressed(raw, comp, path)
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (ValueError, UnicodeDecodeError):
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get(self.text_field), str):
                    continue
                meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
                src = str(obj.get("source") or meta.get("source") or os.path.basename(path))
                lic = obj.get("license") or meta.get("license") or licences.get(src, "unknown")
                rows.append((lineno, src, str(obj.get("id", lineno)), str(lic)))
        return rows

    def labels(self, path: str, sha: str | None, line_start: int, line_end: int,
               n_docs: int, text_field: str) -> list[tuple[str, str, str]]:
        """(source, id, licence) for the `n_docs` documents of lines [line_start, line_end)."""
        if (path, text_field) != self._path:
            self.text_field = text_field
            self._path, self._rows = (path, text_field), self._load(path, sha)
        if self._rows is not None:
            rows = [r[1:] for r in self._rows if line_start <= r[0] < line_end]
            if len(rows) == n_docs:
                return rows
        name = os.path.basename(path)
        return [(name, f"{name}:doc{i}", "unknown") for i in range(n_docs)]


# ---------------------------------------------------------------- build

@dataclass(frozen=True)
class _ShardJob:
    key: str
    path: str
    name: str
    tokens: int
    docs: int
    source: str
    source_sha: str | None
    line_start: int
    line_end: int
    text_field: str


def _jobs(data_dirs: list[str]) -> tuple[list[_ShardJob], dict]:
    """Shards of every data dir (sorted by key) and the shared tokenizer record."""
    jobs, tok = [], None
    for d in data_dirs:
        if not os.path.isdir(d):
            raise DataError(f"{d}: not a directory; pass `olmo2 data tokenize --out` directories")
        meta = load_metadata(d)
        t = dict(meta["tokenizer"], eos_id=int(meta["eos_id"]))
        if tok is not None and t["sha256"] != tok["sha256"]:
            raise DataError(f"{d}: tokenized with tokenizer sha256 {t['sha256'][:12]} but "
                            f"{data_dirs[0]} with {tok['sha256'][:12]}; index them separately")
        tok = tok or t
        dkey = hashlib.sha256(os.path.abspath(d).encode()).hexdigest()[:8]
        sources = {s["file_index"]: s for s in meta["sources"]}
        for s in meta["shards"]:
            src = sources.get(s.get("source_index"), {})
            jobs.append(_ShardJob(
                key=f"{dkey}-{s['name']}", path=s["path"], name=s["name"], tokens=int(s["tokens"]),
                docs=int(s["docs"]), source=src.get("source", "?"), source_sha=src.get("sha256"),
                line_start=int(s.get("line_start", 0)), line_end=int(s.get("line_end", 0)),
                text_field=meta.get("text_field", "text")))
    return sorted(jobs, key=lambda j: j.key), tok


def _ensure_index_root(out: Path, tok: dict) -> None:
    """Create or check INDEX/index.json and INDEX/tokenizer.json (same tokenizer for all)."""
    head = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "tokenizer_sha256": tok["sha256"],
            "vocab_size": int(tok["vocab_size"]), "eos_id": int(tok["eos_id"])}
    ij = out / "index.json"
    if ij.exists():
        have = read_json(ij)
        if have.get("tokenizer_sha256") != tok["sha256"]:
            raise DataError(f"{ij}: this index was built with tokenizer sha256 "
                            f"{str(have.get('tokenizer_sha256'))[:12]}, the data uses "
                            f"{tok['sha256'][:12]}; use a fresh --out")
    if not (out / "tokenizer.json").exists():
        src = tok.get("path")
        if not src or not os.path.isfile(src) or sha256_file(src) != tok["sha256"]:
            raise DataError(f"{src}: the tokenizer the shards were made with is missing or "
                            f"changed (want sha256 {tok['sha256'][:12]}); restore it to index")
        with atomic_file(out / "tokenizer.json", "wb") as f, open(src, "rb") as g:
            shutil.copyfileobj(g, f)
    if not ij.exists():
        write_json(ij, head)


def _shard_done(d: Path, job: _ShardJob) -> bool:
    try:
        m = read_json(d / "manifest.json")
    except DataError:
        return False
    return (m.get("shard_path") == job.path and m.get("tokens") == job.tokens
            and os.path.exists(job.path) and m.get("shard_fingerprint") == fingerprint(job.path))


def build_shard(job: _ShardJob, out: Path, tok: dict, labels: _LabelReader) -> dict:
    """Index one shard into INDEX/shards/<key>/ atomically; return its manifest."""
    t0 = time.perf_counter()
    tokens = np.array(open_tokens(job.path))  # into RAM: libdivsufsort reads it many times
    if tokens.shape[0] != job.tokens:
        raise DataError(f"{job.path}: has {tokens.shape[0]} tokens, its metadata says "
                        f"{job.tokens}; rerun `olmo2 data tokenize`")
    vocab = int(tok["vocab_size"])
    if tokens.size and int(tokens.max()) >= vocab:
        raise DataError(f"{job.path}: token id {int(tokens.max())} >= vocab size {vocab}; "
                        f"the shard does not match its tokenizer")
    starts = read_doc_index(job.path)
    if starts.shape[0] != job.docs + 1 or int(starts[-1]) != tokens.shape[0]:
        raise DataError(f"{job.path[:-4]}.idx.npy: document index does not match the shard; "
                        f"rerun `olmo2 data tokenize`")
    sa = suffix_array(tokens, vocab)
    unigram = np.bincount(tokens, minlength=vocab).astype(np.uint64)
    rows = labels.labels(job.source, job.source_sha, job.line_start, job.line_end, job.docs,
                         job.text_field)
    label_ids: dict[tuple[str, str], int] = {}
    doc_label = np.array([label_ids.setdefault((s, lic), len(label_ids)) for s, _, lic in rows],
                         dtype=np.uint32)
    ids = [r[1].encode("utf-8") for r in rows]
    ids_off = np.zeros(len(ids) + 1, dtype=np.uint64)
    ids_off[1:] = np.cumsum([len(b) for b in ids]) if ids else []
    dest = out / "shards" / job.key
    with atomic_dir(dest) as tmp:
        np.save(tmp / "sa.npy", sa)
        np.save(tmp / "unigram.npy", unigram)
        np.save(tmp / "doc_label.npy", doc_label)
        np.save(tmp / "doc_ids_off.npy", ids_off)
        (tmp / "doc_ids.bin").write_bytes(b"".join(ids))
        write_json(tmp / "labels.json", [list(k) for k in label_ids])
        man = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "key": job.key,
               "shard_name": job.name, "shard_path": job.path,
               "shard_fingerprint": fingerprint(job.path), "shard_sha256": sha256_file(job.path),
               "tokens": int(tokens.shape[0]), "docs": job.docs,
               "tokenizer_sha256": tok["sha256"], "vocab_size": vocab, "eos_id": tok["eos_id"],
               "sa_dtype": str(sa.dtype), "sa_fingerprint": fingerprint(tmp / "sa.npy"),
               "source": job.source}
        index_bytes = sum(p.stat().st_size for p in tmp.iterdir())
        # Timing lives in its own file so manifests of two builds compare byte for byte.
        write_json(tmp / "build.json", {"seconds": time.perf_counter() - t0,
                                        "index_bytes": index_bytes})
        write_json(tmp / "manifest.json", man)
    return dict(man, index_bytes=index_bytes)


def _clean_stale(shards_dir: Path, keys: set[str]) -> None:
    """Remove temp dirs that killed builds of *these* shards left (atomic_dir's `.<key>.*`).

    Only this part's keys: other parts of a job array may be writing into the same INDEX.
    """
    if shards_dir.is_dir():
        for p in shards_dir.iterdir():
            key = p.name[1:].split(".", 1)[0] if p.name.startswith(".") else None
            if key in keys and (p.name.endswith(".tmp") or ".old-" in p.name):
                shutil.rmtree(p, ignore_errors=True)


def partition(jobs: list[_ShardJob], num_parts: int, part_index: int) -> list[_ShardJob]:
    """Largest-first greedy split of the shards into `num_parts` parts (deterministic)."""
    if num_parts < 1 or not 0 <= part_index < num_parts:
        raise DataError(f"--part-index {part_index} must be in [0, --num-parts {num_parts})")
    load = [0] * num_parts
    mine = []
    for j in sorted(jobs, key=lambda j: (-j.tokens, j.key)):
        p = min(range(num_parts), key=lambda i: (load[i], i))
        load[p] += j.tokens
        if p == part_index:
            mine.append(j)
    return sorted(mine, key=lambda j: j.key)


def build_index(data_dirs: list[str], out: str | os.PathLike, *, num_parts: int = 1,
                part_index: int = 0, progress: bool = True) -> BuildSummary:
    """Index every shard of `data_dirs` (this part of them) into `out`; skip finished shards."""
    jobs, tok = _jobs([os.fspath(d) for d in data_dirs])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _ensure_index_root(out, tok)
    mine = partition(jobs, num_parts, part_index)
    _clean_stale(out / "shards", {j.key for j in mine})
    todo = [j for j in mine if not _shard_done(out / "shards" / j.key, j)]
    prog = Progress(sum(j.tokens for j in todo), desc="trace index", unit="tok", enabled=progress)
    labels = _LabelReader()
    t0 = time.perf_counter()
    built_tokens = built_bytes = 0
    for j in todo:
        man = build_shard(j, out, tok, labels)
        built_tokens += man["tokens"]
        built_bytes += man["index_bytes"]
        prog.update(man["tokens"], shard=j.name)
    prog.close()
    s = BuildSummary(str(out), len(mine), len(todo), len(mine) - len(todo), built_tokens,
                     time.perf_counter() - t0, built_bytes)
    if progress:
        print(f"trace index: {s.shards_built} shards built ({s.tokens_built:,} tokens, "
              f"{s.tokens_per_s:,.0f} tok/s, {s.bytes_per_token:.2f} index bytes/token + 4 in the "
              f"shards), {s.shards_skipped} already done -> {out}", file=sys.stderr)
    return s
