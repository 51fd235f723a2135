"""`olmo2 data tokenize` (CLI in `olmo2/commands/data_cmds.py`): raw text files -> uint32
token shards (see `olmo2.data.shards`).

    olmo2 data tokenize 'raw/*.jsonl.gz' --tokenizer tokenizer.json --out tok/ [--workers 8]
    # on a cluster job array (part I of N; all parts may share one --out):
    olmo2 data tokenize 'raw/**/*.zst' --tokenizer t.json --out tok/ --num-shards N --shard-index I

Inputs: .jsonl/.json/.ndjson (optionally .gz or .zst/.zstd), .parquet, .txt (one document per
file). Each document becomes `ids + [EOS]` with no BOS, as OLMo 2 pretraining data (`dolma
tokens`). Documents are never split across shards; a shard is closed once it holds at least
`--shard-tokens` tokens.

Special-token strings inside a document: a literal `<|endoftext|>` (or any other added
token of the tokenizer) in the text is matched as that token, so the EOS id can occur
mid-document. This is what OLMo's own tokenization does: ai2-olmo 0.6.0 `olmo/tokenizer.py`
(`Tokenizer.encode_batch` -> `tokenizers` `encode_batch`, whose added-token matching is on)
and `dolma tokens` (`encode_special_tokens` defaults to False). Like their
`add_special_tokens`, EOS is appended only if the ids do not already end with EOS, so a text
ending in a literal `<|endoftext|>` gets one EOS, not two. tests/test_data_tokenize.py
checks both against OLMo's tokenizer code read from the ai2-olmo wheel. Not copied from
dolma: its `.strip()` of the text and its skipping of blank documents.

Determinism and resume: inputs are sorted; input file #i writes shards `f{i:05d}-{k:05d}`,
and the cut points depend only on the file contents and the settings, so a rerun produces the
same shards. Each shard's `.json` record (written last) stores the line range it covers; a
rerun skips complete files, and inside a partly done file it tokenizes only the lines of the
shards that are missing.

Parallelism: one process per input file (spawned), each using `encode_batch` with
`cores // processes` Rayon threads. With fewer files than cores the leftover cores go to
`encode_batch` threads; with one file everything runs in-process on all threads.
Measured on the 30 MB demo corpus with the dolma2 tokenizer (2 busy cores): about 0.4 M
tokens/s (1.9 MB/s, 460 docs/s); `encode_batch` itself is ~90% of the time. Workers are
spawned, so a script that calls `tokenize(..., workers>1)` needs an
`if __name__ == "__main__":` guard.

Footguns: `.zst` needs `pip install zstandard`, `.parquet` needs `pip install pyarrow`.
Malformed lines are reported as `file:line: reason` and skipped (`--strict`: fatal).
Editing an input invalidates that file's shards (they are redone). Another tokenizer, EOS id,
--text-field, --shard-tokens or --num-shards for an existing --out is refused (the settings
are stored in --out/.olmo2-tokenize.json); a second run of the same part into the same --out
while one is running is refused too (a lock file); see olmo2.data.shard_dir.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import queue
import sys
import time

import numpy as np

from olmo2.data.shards import (FORMAT_VERSION, ShardWriter, metadata_name, read_json,
                               sha256_file, shard_complete, write_json)
from olmo2.errors import DataError, Olmo2Error
from olmo2.progress import Progress

DEFAULT_SHARD_TOKENS = 100_000_000
_BATCH_DOCS = 512
_BATCH_BYTES = 4 << 20


# ---------------------------------------------------------------- inputs

def expand_inputs(patterns: list[str]) -> list[str]:
    """Sorted, de-duplicated input files from paths and globs (`**` allowed)."""
    out = []
    for p in patterns:
        hits = glob.glob(p, recursive=True) if any(c in p for c in "*?[") else [p]
        if not hits:
            raise DataError(f"{p}: no input files match")
        for h in hits:
            if not os.path.isfile(h):
                raise DataError(f"{h}: not a file")
            out.append(os.path.abspath(h))
    return sorted(dict.fromkeys(out))


def partition_inputs(files: list[str], num_shards: int, shard_index: int) -> list[int]:
    """Indices of `files` that part `shard_index` of `num_shards` handles.

    Largest-first greedy by file size (ties by index), so parts get similar byte counts;
    deterministic, and every file lands in exactly one part.
    """
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise DataError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    sizes = [os.path.getsize(f) for f in files]
    load = [0] * num_shards
    owner = [0] * len(files)
    for i in sorted(range(len(files)), key=lambda i: (-sizes[i], i)):
        part = min(range(num_shards), key=lambda p: (load[p], p))
        owner[i] = part
        load[part] += sizes[i]
    return [i for i in range(len(files)) if owner[i] == shard_index]


def input_kind(path: str) -> tuple[str, str | None]:
    """(format, compression) from the file name; raise DataError if unknown."""
    name = path.lower()
    comp = None
    for suf, c in ((".gz", "gz"), (".zst", "zst"), (".zstd", "zst")):
        if name.endswith(suf):
            name, comp = name[: -len(suf)], c
            break
    for suf, kind in ((".jsonl", "jsonl"), (".json", "jsonl"), (".ndjson", "jsonl"),
                      (".parquet", "parquet"), (".txt", "txt")):
        if name.endswith(suf):
            if kind == "parquet" and comp:
                break
            return kind, comp
    raise DataError(f"{path}: unknown input type; expected .jsonl[.gz|.zst], .parquet or .txt")


def _open_decompressed(raw, comp: str | None, path: str):
    if comp is None:
        return raw
    if comp == "gz":
        return gzip.GzipFile(fileobj=raw)
    try:
        import zstandard
    except ImportError:
        raise DataError(f"{path}: reading .zst needs zstandard: pip install zstandard") from None
    return io.BufferedReader(_ZstdReader(raw, zstandard), buffer_size=1 << 20)


class _ZstdReader(io.RawIOBase):
    """A .zst stream (one or more frames) that raises EOFError when the file ends mid-frame.

    zstandard's own stream_reader returns a clean EOF on a truncated file, which would
    tokenize a partial download without a word; decompressobj tells us whether the frame
    was complete (`eof`)."""

    def __init__(self, raw, zstandard):
        self.raw, self.zstd = raw, zstandard
        self.d = zstandard.ZstdDecompressor().decompressobj()
        self.fed = False  # bytes given to the current frame's decompressor
        self.buf, self.pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self.pos >= len(self.buf):
            chunk = self.raw.read(1 << 20)
            if not chunk:
                if self.fed and not self.d.eof:
                    raise EOFError("the file ends in the middle of a zstd frame")
                return 0
            self.buf, self.pos = self._feed(chunk), 0
        n = min(len(b), len(self.buf) - self.pos)
        b[:n] = self.buf[self.pos:self.pos + n]
        self.pos += n
        return n

    def _feed(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            if self.d.eof:  # the next frame of a multi-frame file
                self.d, self.fed = self.zstd.ZstdDecompressor().decompressobj(), False
            self.fed = True
            out.append(self.d.decompress(chunk))
            chunk = self.d.unused_data if self.d.eof else b""
        return b"".join(out)


def _corrupt_errors(comp: str | None) -> tuple:
    """Exceptions that mean "the compressed stream is damaged" (none for plain files)."""
    if comp is None:
        return ()
    import zlib
    errs = [EOFError, OSError, zlib.error]  # gzip.BadGzipFile is an OSError
    if comp == "zst":
        import zstandard
        errs.append(zstandard.ZstdError)
    return tuple(errs)


def _corrupt_reason(comp: str, e: BaseException) -> str:
    detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    if isinstance(e, gzip.BadGzipFile):
        return (f"not gzip data ({detail}); rename the file without .gz if it is not compressed, "
                "or recompress it; nothing after this point can be read")
    return (f"truncated or corrupt .{comp} data ({detail}); re-download or recompress the file; "
            "nothing after this point can be read")


def iter_documents(path: str, text_field: str = "text"):
    """Yield (line_no, text or None, reason or None, raw_bytes_pos) for each record of a file.

    Line numbers are 1-based (row numbers for parquet). A malformed record has text None.
    """
    kind, comp = input_kind(path)
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading .parquet needs pyarrow: pip install pyarrow") from None
        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise DataError(f"{path}: no column {text_field!r} (columns: "
                            f"{', '.join(pf.schema_arrow.names)}); pass --text-field")
        size, total, row = os.path.getsize(path), max(1, pf.metadata.num_rows), 0
        for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
            for v in batch.column(0).to_pylist():
                row += 1
                pos = size * row // total
                if isinstance(v, str):
                    yield row, v, None, pos
                else:
                    yield row, None, f"field {text_field!r} is {type(v).__name__}, not a string", pos
        return
    with open(path, "rb") as raw:
        f = _open_decompressed(raw, comp, path)
        # A truncated or corrupt compressed stream surfaces while reading, as whatever the
        # decompressor raises (EOFError, BadGzipFile, zlib.error, ZstdError). It becomes a
        # malformed record at the line where it happened: reported and the rest of the
        # file skipped, or fatal under --strict, like any malformed line.
        corrupt = _corrupt_errors(comp)
        if kind == "txt":
            try:
                data = f.read()
            except corrupt as e:
                yield 1, None, _corrupt_reason(comp, e), raw.tell()
                return
            try:
                yield 1, data.decode("utf-8"), None, raw.tell()
            except UnicodeDecodeError as e:
                yield 1, None, f"not UTF-8 ({e})", raw.tell()
            return
        lineno = 0
        lines = iter(f)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except corrupt as e:
                yield lineno + 1, None, _corrupt_reason(comp, e), raw.tell()
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield lineno, None, f"bad JSON ({e.msg if hasattr(e, 'msg') else e})", raw.tell()
                continue
            if not isinstance(obj, dict) or text_field not in obj:
                yield lineno, None, f"missing field {text_field!r}", raw.tell()
            elif not isinstance(obj[text_field], str):
                yield lineno, None, (f"field {text_field!r} is "
                                     f"{type(obj[text_field]).__name__}, not a string"), raw.tell()
            else:
                yield lineno, obj[text_field], None, raw.tell()


# ---------------------------------------------------------------- per-file work

_TOKENIZER_CACHE: dict = {}
_PROGRESS_QUEUE = None


def _load_tokenizer(path: str, eos_id: int | None = None):
    """The raw `tokenizers.Tokenizer` for encode_batch, loaded through `olmo2.tokenizer` (the one
    loading path); cached per process, as every worker tokenizes many batches."""
    tok = _TOKENIZER_CACHE.get((path, eos_id))
    if tok is None:
        from olmo2.tokenizer import Tokenizer
        try:
            tok = Tokenizer.from_file(path, eos_id=eos_id)
        except Olmo2Error as e:  # the data pipeline reports it as a data problem
            raise DataError(str(e)) from None
        _TOKENIZER_CACHE[(path, eos_id)] = tok
    return tok


def _encode(tok, texts: list[str]) -> list[list[int]]:
    # encode_batch_fast skips offset tracking (tokenizers >= 0.21); ids are identical.
    fn = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in fn(texts, add_special_tokens=False)]


def _settings_key(job: dict, size: int, mtime_ns: int) -> str:
    key = json.dumps([job["tokenizer_sha"], job["eos_id"], job["text_field"],
                      job["shard_tokens"], size, mtime_ns, FORMAT_VERSION])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def tokenize_file(job: dict, report=None) -> dict:
    """Tokenize one input file into its shards (skipping complete ones); return its record."""
    path, prefix = job["path"], os.path.join(job["out"], f"f{job['file_index']:05d}")
    st = os.stat(path)
    key = _settings_key(job, st.st_size, st.st_mtime_ns)
    done_path = prefix + ".done.json"
    if os.path.exists(done_path):
        rec = read_json(done_path)
        if rec.get("settings_key") == key and all(
                shard_complete(os.path.join(job["out"], s["name"])) for s in rec["shards"]):
            if report:
                report(st.st_size, 0, 0)
            return dict(rec, skipped=True)
        os.unlink(done_path)

    # Shards of this file that survive from an earlier, interrupted run.
    done: dict[int, dict] = {}
    for rp in glob.glob(glob.escape(prefix) + "-*.json"):
        base = rp[:-5]
        rec = shard_complete(base)
        if rec and rec.get("settings_key") == key:
            done[int(base.rsplit("-", 1)[1])] = rec
    ranges = sorted((r["line_start"], r["line_end"], k) for k, r in done.items())

    def covering(lineno):
        for a, b, k in ranges:
            if a <= lineno < b:
                return k
        return None

    tok = _load_tokenizer(job["tokenizer"], job["eos_id"]).tk
    eos = np.array([job["eos_id"]], dtype=np.uint32)
    shards: dict[int, dict] = dict(done)
    state = {"k": 0, "writer": None, "line_start": 0}
    malformed, last_pos = 0, 0

    def consume(lineno, ids) -> int:
        if state["writer"] is None:
            name = f"{prefix}-{state['k']:05d}"
            state["writer"], state["line_start"] = ShardWriter(name), lineno
        w = state["writer"]
        doc = np.asarray(ids, dtype=np.uint32)
        # As OLMo's `add_special_tokens` (olmo/tokenizer.py, dolma's tokenizer alike): EOS is
        # appended unless the ids already end with it (a text ending in a literal EOS string).
        if not len(doc) or doc[-1] != job["eos_id"]:
            doc = np.concatenate([doc, eos])
        w.add_doc(doc)
        if w.n_tokens >= job["shard_tokens"]:
            close(lineno + 1)
        return len(doc)

    def close(line_end):
        w = state["writer"]
        rec = w.close({"source": path, "line_start": state["line_start"],
                       "line_end": line_end, "settings_key": key})
        shards[state["k"]] = rec
        state["k"] += 1
        state["writer"] = None

    batch: list[tuple[int, str]] = []
    batch_bytes = 0

    def flush():
        nonlocal batch, batch_bytes, last_pos
        if not batch:
            return
        ids = _encode(tok, [t for _, t in batch])
        n_tok = 0
        for (lineno, _), d in zip(batch, ids):
            n_tok += consume(lineno, d)
        if report:
            report(pos - last_pos, len(batch), n_tok)
            last_pos = pos
        batch, batch_bytes = [], 0

    try:
        pos = 0
        for lineno, text, reason, pos in iter_documents(path, job["text_field"]):
            if text is None:
                malformed += 1
                msg = f"{path}:{lineno}: {reason}"
                if job["strict"]:
                    raise DataError(msg + " (--strict)")
                print(msg, file=sys.stderr, flush=True)
                continue
            k = covering(lineno)
            if k is not None:
                flush()
                if state["writer"] is not None:
                    raise DataError(f"{prefix}: resumed shards do not line up with the input; "
                                    f"delete {prefix}-* and rerun")
                state["k"] = k + 1
                continue
            batch.append((lineno, text))
            batch_bytes += len(text)
            if len(batch) >= _BATCH_DOCS or batch_bytes >= _BATCH_BYTES:
                flush()
        flush()
        if state["writer"] is not None:
            close(lineno + 1)
    except BaseException:
        if state["writer"] is not None:
            state["writer"].abort()
        raise
    if report:
        report(max(0, st.st_size - last_pos), 0, 0)

    n_shards = state["k"] if not ranges else max(state["k"], max(k for *_, k in ranges) + 1)
    # Remove stale shards of this file from runs with other settings or more shards.
    for rp in glob.glob(glob.escape(prefix) + "-*.json"):
        kk = int(rp[:-5].rsplit("-", 1)[1])
        if kk >= n_shards:
            for ext in (".json", ".npy", ".idx.npy"):
                if os.path.exists(rp[:-5] + ext):
                    os.unlink(rp[:-5] + ext)
    recs = [shards[k] for k in range(n_shards)]
    out = {"source": path, "file_index": job["file_index"], "size": st.st_size,
           "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path), "settings_key": key,
           "shards": recs, "docs": sum(r["docs"] for r in recs),
           "tokens": sum(r["tokens"] for r in recs), "malformed": malformed}
    write_json(done_path, out)
    return dict(out, skipped=False)


def _worker_init(threads: int, q) -> None:
    global _PROGRESS_QUEUE
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["RAYON_RS_NUM_CPUS"] = str(threads)
    _PROGRESS_QUEUE = q


def _worker(job: dict) -> dict:
    return tokenize_file(job, report=lambda b, d, t: _PROGRESS_QUEUE.put((b, d, t)))


# ---------------------------------------------------------------- driver

def tokenizer_info(tokenizer: str, eos_id: int | None = None) -> dict:
    """sha256 (`Tokenizer.sha256`), vocab size and eos id of a tokenizer.json (eos looked up if
    not given)."""
    if not os.path.isfile(tokenizer):
        raise DataError(f"{tokenizer}: tokenizer.json not found")
    tok = _load_tokenizer(os.path.abspath(tokenizer), eos_id)
    return {"path": os.path.abspath(tokenizer), "sha256": tok.sha256,
            "vocab_size": tok.vocab_size, "eos_id": int(tok.eos_id)}


def tokenize(inputs: list[str], tokenizer: str, out: str, *, text_field: str = "text",
             eos_id: int | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS,
             num_shards: int = 1, shard_index: int = 0, workers: int | None = None,
             strict: bool = False, progress: bool = True) -> dict:
    """Tokenize `inputs` (paths/globs) into shards under `out`; return the metadata dict.

    Holds this part's lock on `out` and refuses settings other than those `out` was
    tokenized with (olmo2.data.shard_dir), after the cheap checks of the arguments."""
    from olmo2.data.shard_dir import guard_shard_dir
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens must be positive, got {shard_tokens}")
    partition_inputs(expand_inputs(inputs), num_shards, shard_index)
    info = tokenizer_info(tokenizer, eos_id)
    settings = {"format_version": FORMAT_VERSION, "tokenizer_sha256": info["sha256"], "eos_id": info["eos_id"],
                "text_field": text_field, "shard_tokens": int(shard_tokens), "num_shards": int(num_shards)}
    with guard_shard_dir(out, settings, shard_index, num_shards, progress=progress):
        return _tokenize(inputs, tokenizer, out, text_field=text_field, eos_id=eos_id, shard_tokens=shard_tokens,
                         num_shards=num_shards, shard_index=shard_index, workers=workers, strict=strict,
                         progress=progress)


def _tokenize(inputs: list[str], tokenizer: str, out: str, *, text_field: str, eos_id: int | None,
              shard_tokens: int, num_shards: int, shard_index: int, workers: int | None,
              strict: bool, progress: bool) -> dict:
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens must be positive, got {shard_tokens}")
    files = expand_inputs(inputs)
    mine = partition_inputs(files, num_shards, shard_index)
    info = tokenizer_info(tokenizer, eos_id)
    os.makedirs(out, exist_ok=True)
    jobs = [{"path": files[i], "file_index": i, "out": os.path.abspath(out),
             "tokenizer": info["path"], "tokenizer_sha": info["sha256"],
             "eos_id": info["eos_id"], "text_field": text_field,
             "shard_tokens": int(shard_tokens), "strict": strict} for i in mine]
    total_bytes = sum(os.path.getsize(j["path"]) for j in jobs)
    cores = workers or os.cpu_count() or 1
    procs = max(1, min(cores, len(jobs)))
    prog = Progress(total_bytes, desc="tokenize", unit="B", enabled=progress)
    counts = {"docs": 0, "tokens": 0}
    t0 = time.perf_counter()

    def report(b, d, t):
        counts["docs"] += d
        counts["tokens"] += t
        dt = max(time.perf_counter() - t0, 1e-9)
        prog.update(b, **{"docs/s": f"{counts['docs'] / dt:,.0f}",
                          "tok/s": f"{counts['tokens'] / dt:,.0f}"})

    records = []
    if procs == 1:
        for j in jobs:
            records.append(tokenize_file(j, report))
    else:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        with ctx.Pool(procs, initializer=_worker_init,
                      initargs=(max(1, cores // procs), q)) as pool:
            pending = [pool.apply_async(_worker, (j,)) for j in jobs]
            while True:
                try:
                    report(*q.get(timeout=0.2))
                    continue
                except queue.Empty:
                    pass
                failed = [r for r in pending if r.ready() and not r.successful()]
                if failed:
                    pool.terminate()
                    failed[0].get()  # re-raises the worker's DataError
                if all(r.ready() for r in pending):
                    break
            while not q.empty():
                report(*q.get())
            records = [r.get() for r in pending]
    prog.close()
    elapsed = time.perf_counter() - t0
    records.sort(key=lambda r: r["file_index"])
    shards = [dict(s, source_index=r["file_index"]) for r in records for s in r["shards"]]
    meta = {
        "format_version": FORMAT_VERSION, "dtype": "uint32",
        "tokenizer": {k: info[k] for k in ("path", "sha256", "vocab_size")},
        "eos_id": info["eos_id"], "bos_id": None, "text_field": text_field,
        "shard_tokens": int(shard_tokens),
        "part": {"index": shard_index, "count": num_shards, "num_inputs_total": len(files)},
        "sources": [{k: r[k] for k in ("source", "file_index", "sha256", "size", "docs",
                                       "tokens", "malformed")} for r in records],
        "shards": [{k: s[k] for k in ("name", "tokens", "docs", "source_index",
                                      "line_start", "line_end")} for s in shards],
        "total_tokens": sum(r["tokens"] for r in records),
        "total_docs": sum(r["docs"] for r in records),
        "malformed_lines": sum(r["malformed"] for r in records),
    }
    write_json(os.path.join(out, metadata_name(shard_index, num_shards)), meta)
    skipped = sum(r["skipped"] for r in records)
    if progress:
        print(f"tokenize: {meta['total_docs']:,} docs, {meta['total_tokens']:,} tokens in "
              f"{len(shards)} shards from {len(records)} files ({skipped} already done), "
              f"{meta['malformed_lines']} malformed lines, {elapsed:.1f}s -> {out}",
              file=sys.stderr)
    return meta
