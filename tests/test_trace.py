"""`olmo2 trace`: suffix arrays and span search checked against brute-force scans of the shards.

A synthetic corpus (WordLevel tokenizer, 300 words, so tokens are 2 bytes wide in the SA
encoding) is tokenized into several shards with `olmo2 data tokenize`; planted sentences
cross document and shard boundaries to check that no match runs across an EOS or a shard.
"""
from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from tokenizers import Tokenizer, models, pre_tokenizers

from olmo2.cli import main
from olmo2.data.shards import load_metadata, open_tokens
from olmo2.data.tokenize import tokenize
from olmo2.errors import DataError
from olmo2.trace import index as ix
from olmo2.trace import query
from olmo2.trace.rank import candidate_spans, trace_text, word_starts
from olmo2.trace.store import open_index

WORDS = [f"w{i}" for i in range(298)]
PLANT = "w290 w291 w292 w293 w294 w295 w296 w297"  # rare words, planted a few times


def make_tokenizer(path, words=WORDS) -> str:
    vocab = {"[UNK]": 0, "<|endoftext|>": 1}
    for w in words:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(path))
    return str(path)


def _docs(rng, n):
    # Zipf-ish: common words often, the w29x words never (they are planted by hand).
    out = []
    for _ in range(n):
        k = rng.randint(5, 60)
        out.append(" ".join(f"w{min(int(rng.paretovariate(0.8)) - 1, 280)}" for _ in range(k)))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(tmp dir, data dir, tokenizer path): 3 jsonl files, ~25k tokens, many small shards."""
    d = tmp_path_factory.mktemp("trace")
    tok = make_tokenizer(d / "tokenizer.json")
    rng = random.Random(0)
    raw = d / "raw"
    raw.mkdir()
    (raw / "manifest.json").write_text(json.dumps(
        {"sources": {"alpha": {"license": "CC-BY-4.0"}, "beta": {"license": "MIT"}}}))
    for f in range(3):
        texts = _docs(rng, 150)
        # Plant the sentence whole in one doc, and split across a document end.
        texts[10] = texts[10] + " " + PLANT
        texts[20] = texts[20] + " w290 w291 w292 w293"
        texts[21] = "w294 w295 w296 w297 " + texts[21]
        with open(raw / f"part{f}.jsonl", "w") as fh:
            for i, t in enumerate(texts):
                rec = {"text": t, "id": f"p{f}-{i}", "source": "alpha" if i % 2 else "beta"}
                fh.write(json.dumps(rec) + "\n")
    tokenize([str(raw / "*.jsonl")], tok, str(d / "data"), shard_tokens=1500, workers=1,
             progress=False)
    return d, d / "data", tok


@pytest.fixture(scope="module")
def index(corpus):
    d, data, _ = corpus
    ix.build_index([str(data)], d / "idx", progress=False)
    return open_index(d / "idx")


def _shard_arrays(data):
    return [np.asarray(open_tokens(s["path"]), dtype=np.int64)
            for s in load_metadata(str(data))["shards"]]


def brute_count(arrays, span) -> int:
    span = np.asarray(span, dtype=np.int64)
    if span.size == 0:
        return 0
    return int(sum(np.all(sliding_window_view(a, span.size) == span, axis=1).sum()
                   for a in arrays if a.size >= span.size))


def brute_longest(arrays, q, s, eos):
    best = 0
    while s + best < len(q) and q[s + best] != eos and brute_count(arrays, q[s:s + best + 1]):
        best += 1
    return best


# ---------------------------------------------------------------- suffix array

@pytest.mark.parametrize("vocab", [200, 3000, 70000])
def test_suffix_array_equals_sorted_suffixes(vocab):
    """1-, 2- and 3-byte token widths all give the token-level suffix array."""
    rng = np.random.default_rng(vocab)
    # Few distinct values so long shared prefixes occur (the hard case for the byte trick).
    vals = rng.choice([0, 1, vocab - 1, 255, 256, 65535, 65536], size=400) % vocab
    toks = vals.astype(np.uint32)
    sa = ix.suffix_array(toks, vocab)
    want = sorted(range(len(toks)), key=lambda i: toks[i:].tolist())
    assert sa.dtype == np.int32
    assert sa.tolist() == want


def test_suffix_array_empty_and_single():
    assert ix.suffix_array(np.zeros(0, np.uint32), 10).size == 0
    assert ix.suffix_array(np.array([7], np.uint32), 10).tolist() == [0]


# ---------------------------------------------------------------- spans vs brute force

def test_longest_and_counts_match_brute_force(corpus, index):
    _, data, _ = corpus
    arrays = _shard_arrays(data)
    assert len(arrays) >= 6
    rng = np.random.default_rng(1)
    eos = index.eos_id
    for trial in range(6):
        # A query made of corpus pieces (long matches), random tokens and an EOS.
        a = arrays[trial % len(arrays)]
        p = int(rng.integers(0, a.size - 40))
        q = np.concatenate([a[p:p + 30], rng.integers(2, 290, 10), [eos],
                            arrays[-1][-12:], rng.integers(2, 300, 5)]).astype(np.int64)
        starts = np.arange(q.size)
        h = query.longest(index, q, starts)
        for s in starts:
            want = brute_longest(arrays, q, s, eos)
            assert h.length[s] == want, (trial, s)
            if want:
                assert h.count[s] == brute_count(arrays, q[s:s + want]), (trial, s)
        # occurrences point at real copies
        s = 0
        for shard_i, pos in query.occurrences(index, q, 0, int(h.length[0])):
            t = np.asarray(index.shards[shard_i].tokens[pos:pos + h.length[0]], dtype=np.int64)
            assert t.tolist() == q[:h.length[0]].tolist()


def test_planted_span_never_crosses_eos_or_shards(corpus, index):
    d, data, tokpath = corpus
    arrays = _shard_arrays(data)
    tok = Tokenizer.from_file(tokpath)
    q = np.asarray(tok.encode(PLANT).ids, dtype=np.int64)
    # Whole span: only the 3 intact plants, not the 3 split across a document end.
    assert query.count(index, q, 0, 8) == brute_count(arrays, q) == 3
    assert query.count(index, q, 0, 4) == 6 and query.count(index, q, 4, 8) == 6
    # Shard seams: the last tokens of shard k followed by the first of shard k+1 never match.
    for a, b in zip(arrays, arrays[1:]):
        seam = np.concatenate([a[-3:-1], b[:3]])  # a[-1] is EOS; drop it to tempt a match
        assert query.count(index, seam, 0, 5) == brute_count(arrays, seam)
    # Documents of occurrences end at EOS and start at a document start.
    for shard_i, pos in query.occurrences(index, q, 0, 8):
        sh = index.shards[shard_i]
        dd = sh.doc_of(pos)
        assert sh.doc_starts[dd] <= pos < sh.doc_starts[dd + 1]


def test_empty_and_absent_spans(index):
    assert query.count(index, np.zeros(0, np.int64), 0, 0) == 0
    assert query.occurrences(index, np.array([5]), 0, 0) == []
    absent = np.array([0, 0, 0], dtype=np.int64)  # [UNK] never occurs
    assert query.count(index, absent, 0, 3) == 0
    assert query.occurrences(index, absent, 0, 3) == []
    res = trace_text(index, "")
    assert res.spans == [] and res.num_tokens == 0
    res = trace_text(index, "zzz qqq")  # unknown words only
    assert res.spans == []


def test_trace_text_selects_planted_span(index):
    text = "w1 w2 w3 " + PLANT + " w1 w1 w2"
    res = trace_text(index, text)
    assert len(res.spans) == 1  # ceil(0.05 * 14) = 1: the most distinctive span
    sp = res.spans[0]
    assert sp.text == PLANT and sp.count == 3
    assert 1 <= len(sp.docs) <= 3
    for doc in sp.docs:
        assert doc.match.split() == PLANT.split()
        assert doc.source in ("alpha", "beta")
        assert doc.license == {"alpha": "CC-BY-4.0", "beta": "MIT"}[doc.source]
        assert doc.doc_id.startswith("p")
    scores = [doc.score for doc in sp.docs]
    assert scores == sorted(scores, reverse=True)
    # BM25 against the whole output: an output that also uses the words around the last-
    # ranked occurrence (reversed, so not verbatim) must put that document first.
    last = sp.docs[-1]
    around = (last.before.split() + last.after.split())[-40:]
    res2 = trace_text(index, PLANT + " " + " ".join(reversed(around)))
    sp2 = next(s for s in res2.spans if s.text == PLANT)
    assert sp2.docs[0].doc_id == last.doc_id and sp2.docs[0].score > sp2.docs[1].score


def test_candidate_spans_are_maximal_and_bounded(corpus, index):
    _, data, tokpath = corpus
    arrays = _shard_arrays(data)
    tok = Tokenizer.from_file(tokpath)
    rng = np.random.default_rng(5)
    a = arrays[2]
    q = np.concatenate([a[100:130], rng.integers(2, 300, 20)]).astype(np.int64)
    text = tok.decode(q.tolist(), skip_special_tokens=False)
    enc = tok.encode(text)
    assert enc.ids == q.tolist()
    spans = candidate_spans(index, q, word_starts(text, enc.offsets), max_count=10)
    for i, (s, e, c) in enumerate(spans):
        assert c == brute_count(arrays, q[s:e]) and 1 <= c <= 10
        for j, (s2, e2, _) in enumerate(spans):
            assert i == j or not (s2 <= s and e <= e2), "nested span kept"


def test_memorised_fraction_brute_force(corpus, index):
    _, data, _ = corpus
    arrays = _shard_arrays(data)
    rng = np.random.default_rng(3)

    def piece(a, n):  # n tokens from inside one document (no EOS)
        p = next(p for p in range(a.size - n) if index.eos_id not in a[p:p + n])
        return a[p:p + n]

    q = np.concatenate([piece(arrays[1], 20), rng.integers(2, 300, 15), piece(arrays[3], 9),
                        rng.integers(2, 300, 6)]).astype(np.int64)
    covered = np.zeros(q.size, bool)
    for s in range(q.size):
        n = brute_longest(arrays, q, s, index.eos_id)
        if n >= 8:
            covered[s:s + n] = True
    assert query.memorised_fraction(index, q) == pytest.approx(covered.mean())
    assert covered.mean() >= 29 / 50
    assert query.memorised_fraction(index, []) == 0.0
    # The text form (what the replicate report calls) agrees, from an index path too.
    text = " ".join(f"w{t - 2}" for t in q)
    assert query.memorised_fractions(str(index.path), [text, ""]) == [
        pytest.approx(covered.mean()), 0.0]


# ---------------------------------------------------------------- build: determinism, resume, errors

def _index_files(root):
    out = {}
    for dp, _, fs in os.walk(root):
        for f in fs:
            if f != "build.json":
                p = os.path.join(dp, f)
                out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_build_deterministic_and_resumes(corpus, tmp_path, monkeypatch):
    _, data, _ = corpus
    ix.build_index([str(data)], tmp_path / "a", progress=False)
    real, calls = ix.suffix_array, []

    def dies_on_third(tokens, vocab):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a killed build
        return real(tokens, vocab)

    monkeypatch.setattr(ix, "suffix_array", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        ix.build_index([str(data)], tmp_path / "b", progress=False)
    shards = tmp_path / "b" / "shards"
    assert len([p for p in shards.iterdir() if not p.name.startswith(".")]) == 2
    assert not [p for p in shards.iterdir() if p.name.startswith(".")]  # temp dir removed
    key = sorted(p.name for p in shards.iterdir())[0]
    (shards / f".{key}.k1ll3d.tmp").mkdir()  # what a SIGKILL leaves behind
    (shards / ".other-part.x.tmp").mkdir()  # another array part's build in progress
    monkeypatch.setattr(ix, "suffix_array", real)
    s = ix.build_index([str(data)], tmp_path / "b", progress=False)
    assert sorted(p.name for p in shards.iterdir() if p.name.startswith(".")) == [
        ".other-part.x.tmp"]
    shutil.rmtree(shards / ".other-part.x.tmp")
    assert s.shards_skipped == 2 and s.shards_built == s.shards_total - 2
    assert _index_files(tmp_path / "a") == _index_files(tmp_path / "b")
    again = ix.build_index([str(data)], tmp_path / "b", progress=False)
    assert again.shards_built == 0


def test_job_array_parts_combine(corpus, tmp_path):
    _, data, _ = corpus
    total = 0
    for i in range(3):
        total += ix.build_index([str(data)], tmp_path / "p", num_parts=3, part_index=i,
                                progress=False).shards_built
    assert total == len(load_metadata(str(data))["shards"])
    ix.build_index([str(data)], tmp_path / "w", progress=False)
    assert _index_files(tmp_path / "p") == _index_files(tmp_path / "w")


def _one_line_error(fn) -> str:
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_corrupt_or_mismatched_index_errors(corpus, tmp_path):
    d, data, _ = corpus
    shutil.copytree(data, tmp_path / "data")
    ix.build_index([str(tmp_path / "data")], tmp_path / "idx", progress=False)
    open_index(tmp_path / "idx")
    # Other tokenizer: data tokenized with another vocabulary cannot join this index.
    tok2 = make_tokenizer(tmp_path / "tok2.json", WORDS + ["extra"])
    tokenize([str(d / "raw" / "part0.jsonl")], tok2, str(tmp_path / "data2"), workers=1,
             progress=False)
    assert "tokenizer" in _one_line_error(
        lambda: ix.build_index([str(tmp_path / "data2")], tmp_path / "idx", progress=False))
    # The index's tokenizer.json replaced.
    tj = tmp_path / "idx" / "tokenizer.json"
    good = tj.read_bytes()
    tj.write_bytes(open(tok2, "rb").read())
    assert "tokenizer.json" in _one_line_error(lambda: open_index(tmp_path / "idx"))
    tj.write_bytes(good)
    # A changed shard (same size, other tokens).
    shard = sorted((tmp_path / "data").glob("f00000-00000.npy"))[0]
    arr = np.load(shard)
    arr[5] = (arr[5] + 1) % 250 + 2
    raw = shard.read_bytes()
    shard.write_bytes(raw[:128] + arr.astype("<u4").tobytes())
    assert "changed since it was indexed" in _one_line_error(lambda: open_index(tmp_path / "idx"))
    # ...which a rerun of the build repairs.
    assert ix.build_index([str(tmp_path / "data")], tmp_path / "idx",
                          progress=False).shards_built == 1
    open_index(tmp_path / "idx")
    # A truncated suffix array.
    sa = next((tmp_path / "idx" / "shards").glob("*/sa.npy"))
    sa.write_bytes(sa.read_bytes()[:-4])
    assert "sa.npy" in _one_line_error(lambda: open_index(tmp_path / "idx"))
    assert "not a trace index" in _one_line_error(lambda: open_index(tmp_path))


def test_cli_index_and_query(corpus, tmp_path, capsys):
    _, data, _ = corpus
    assert main(["trace", "index", str(data), "--out", str(tmp_path / "i"), "--quiet"]) == 0
    assert main(["trace", "query", "--index", str(tmp_path / "i"), "--json",
                 "--text", "w5 " + PLANT]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [s["text"] for s in res["spans"]] == [PLANT]
    assert main(["trace", "query", "--index", str(tmp_path / "i"), "--text", PLANT]) == 0
    out = capsys.readouterr().out
    assert "[[" + PLANT + "]]" in out and "licence" in out and "shard data/f0000" in out
    assert main(["trace", "query", "--index", str(tmp_path / "nope"), "--text", "x"]) == 2
    assert "error:" in capsys.readouterr().err


def test_generate_trace(corpus, index, tmp_path, capsys):
    """`generate --trace` prints the continuation unchanged and the trace view on stderr."""
    _, _, tokpath = corpus
    m = str(tmp_path / "m")
    assert main(["init", "--preset", "tiny", "--out", m, "--tokenizer", tokpath, "--seed", "1"]) == 0
    capsys.readouterr()
    gen = ["generate", "--model", m, "--prompt", "w1 w2", "--max-new-tokens", "40",
           "--temperature", "0"]
    assert main(gen) == 0
    plain = capsys.readouterr().out
    assert main(gen + ["--trace", str(index.path)]) == 0
    out, err = capsys.readouterr()
    assert out == plain
    assert "output tokens, corpus" in err or "no span of the output" in err
    assert main(gen + ["--trace", str(tmp_path)]) == 2
    assert "not a trace index" in capsys.readouterr().err
    # chat --trace: each reply is traced after it is printed.
    import io
    import sys
    chat = ["chat", "--model", m, "--max-new-tokens", "20", "--temperature", "0",
            "--trace", str(index.path)]
    old_stdin = sys.stdin
    try:
        sys.stdin = io.StringIO("w1 w2\nw3\n/exit\n")
        assert main(chat) == 0
    finally:
        sys.stdin = old_stdin
    err = capsys.readouterr().err
    assert err.count("output tokens, corpus") + err.count("no span of the output") == 2


def test_labels_fall_back_when_input_changed(corpus, tmp_path):
    """An input edited after tokenizing cannot be trusted for labels: file name, 'unknown'."""
    d, _, tok = corpus
    raw = tmp_path / "in.jsonl"
    shutil.copy(d / "raw" / "part0.jsonl", raw)
    tokenize([str(raw)], tok, str(tmp_path / "data"), workers=1, progress=False)
    ix.build_index([str(tmp_path / "data")], tmp_path / "ok", progress=False)
    sh = open_index(tmp_path / "ok").shards[0]
    assert sh.doc_info(1) == ("alpha", "p0-1", "unknown")  # no manifest.json beside in.jsonl
    with open(raw, "a") as f:
        f.write('{"text": "w1"}\n')
    ix.build_index([str(tmp_path / "data")], tmp_path / "changed", progress=False)
    sh = open_index(tmp_path / "changed").shards[0]
    assert sh.doc_info(1) == ("in.jsonl", "in.jsonl:doc1", "unknown")
