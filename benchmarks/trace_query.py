"""`olmo2 trace` cost: build tokens/s, index bytes/token, query latency; demo corpus and scale.

    python benchmarks/trace_query.py [--work /tmp/trace-bench] [--sizes 30e6,100e6] [--copies 10]

1. demo corpus (demo BPE, 8k vocab, 2-byte SA encoding): tokenize, index, then trace three
   200-token outputs (a held-out val document, a train document = verbatim memorisation, half
   of each), median of 5 runs, against a peer measured in the same run: the same longest
   matches found by a linear numpy scan of the token array (`scan_longest`);
2. the same text tokenized with the real dolma2 tokenizer (100k vocab, 3-byte encoding, what
   an OLMo-mix-1124 index uses): build speed and bytes/token;
3. synthetic single shards of --sizes tokens (dolma2 documents repeated in seeded random
   orders; builds in a subprocess, so peak RSS is the build's) — how build and query grow
   with shard size;
4. a ~1B-token index of --copies shards: hard links of the largest shard and of its index
   files (identical content gives an identical suffix array, so building each copy again
   would only repeat step 3's measurement) — how query cost grows with the number of shards.
"search" is the span search alone (longest match at every word start, all shards): the part
whose cost grows with the index. "trace" adds span selection, documents and BM25; in the
repeated corpora every span occurs at least once per copy, so at the default K=10 few or no
spans survive there and "trace" is mostly search.
Prints a table and a projection for OLMo-mix-1124 (3.9T tokens); writes results.json.
Not a test: on a shared 2-core machine the times are noisy; the load average is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OLMO_MIX_TOKENS = 3.9e12  # OLMo-mix-1124, /work/shared/docs/olmo2-facts.md (paper Table 1)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def scan_longest(tokens: np.ndarray, q: np.ndarray, starts, eos: int) -> list[int]:
    """Peer: longest match per start by scanning the whole token array (no index)."""
    out = []
    for s in starts:
        cand = np.flatnonzero(tokens[:-1] == q[s]) if q[s] != eos else np.zeros(0, np.int64)
        n = 1 if cand.size else 0
        while cand.size and s + n < len(q) and q[s + n] != eos:
            nxt = cand[cand + n < tokens.size]
            nxt = nxt[tokens[nxt + n] == q[s + n]]
            if not nxt.size:
                break
            cand, n = nxt, n + 1
        out.append(n)
    return out


def texts_200(tok, train_path: Path, val_path: Path) -> dict[str, str]:
    """Three 200-token outputs: novel (val), memorised (train), half and half."""
    def first(path, skip):
        with open(path) as f:
            for i, line in enumerate(f):
                if i >= skip:
                    ids = tok.encode(json.loads(line)["text"]).ids
                    if len(ids) >= 400:
                        return ids
    val, train = first(val_path, 3), first(train_path, 11)
    return {"val (novel)": tok.decode(val[:200]), "train (memorised)": tok.decode(train[:200]),
            "half/half": tok.decode(train[200:300] + val[200:300])}


def time_queries(index, texts: dict[str, str], runs: int = 5) -> dict:
    """Per text: full trace (median), span search alone (median), memorisation figure."""
    from olmo2.trace import memorised_fraction, trace_text
    from olmo2.trace.query import longest
    from olmo2.trace.rank import word_starts
    out = {}
    for name, text in texts.items():
        ts, tl = [], []
        enc = index.tokenizer.encode(text)
        starts = np.flatnonzero(word_starts(text, enc.offsets))
        for _ in range(runs):
            t0 = time.perf_counter()
            res = trace_text(index, text)
            ts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            longest(index, np.asarray(enc.ids), starts)
            tl.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mem = memorised_fraction(index, enc.ids)
        t_mem = time.perf_counter() - t0
        out[name] = {"tokens": res.num_tokens, "median_s": statistics.median(ts),
                     "search_s": statistics.median(tl),
                     "spans": len(res.spans), "memorised": mem, "memorised_s": t_mem,
                     "starts": int(word_starts(text, enc.offsets).sum())}
    return out


def _fmt(qq: dict) -> str:
    return "; ".join(f"{k}: trace {v['median_s'] * 1e3:.0f} ms ({v['spans']} spans), search "
                     f"{v['search_s'] * 1e3:.0f} ms" for k, v in qq.items())


def build(data: Path, out: Path) -> dict:
    """`olmo2 trace index` in a subprocess: wall time, tok/s, bytes/token, peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    code = ("import json,sys; from olmo2.trace.index import build_index; "
            f"s=build_index([{str(data)!r}], {str(out)!r}, progress=False); "
            "print(json.dumps(dict(tokens=s.tokens_built, seconds=s.seconds, "
            "tok_s=s.tokens_per_s, bytes_per_token=s.bytes_per_token)))")
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    # CPU seconds of the build process: on a shared machine a steadier figure than wall time.
    res["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res["tok_per_cpu_s"] = res["tokens"] / max(res["cpu_s"], 1e-9)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return res


def tokenized(src: Path, tokenizer: str, out: Path) -> Path:
    from olmo2.data.tokenize import tokenize
    tokenize([str(src)], tokenizer, str(out), workers=1, progress=False)  # skips if done
    return out


def synthetic(base: Path, n_tokens: int, out: Path) -> Path:
    """A tokenize-format dir with one shard of >= n_tokens: base docs, shuffled copies."""
    from olmo2.data.shards import ShardWriter, load_metadata, open_tokens, read_doc_index, \
        write_json
    if (out / "metadata.json").exists():
        return out
    meta = load_metadata(str(base))
    toks = np.asarray(open_tokens(meta["shards"][0]["path"]))
    starts = read_doc_index(meta["shards"][0]["path"]).astype(np.int64)
    out.mkdir(parents=True, exist_ok=True)
    w, rng, docs = ShardWriter(out / "f00000-00000"), np.random.default_rng(0), 0
    while w.n_tokens < n_tokens:
        for d in rng.permutation(len(starts) - 1):
            w.add_doc(toks[starts[d]:starts[d + 1]])
            docs += 1
            if w.n_tokens >= n_tokens:
                break
    rec = w.close({"source": "synthetic", "line_start": 0, "line_end": docs})
    m = {k: v for k, v in meta.items() if k not in ("parts", "dir")}
    m.update(sources=[], total_tokens=rec["tokens"], total_docs=docs,
             shards=[{"name": rec["name"], "tokens": rec["tokens"], "docs": docs,
                      "source_index": None, "line_start": 0, "line_end": docs}])
    write_json(out / "metadata.json", m)
    return out


def linked_index(idx: Path, data: Path, copies: int, out: Path) -> Path:
    """`copies` shards that are hard links of data's one shard, and hard-linked index dirs."""
    from olmo2.data.shards import write_json
    shutil.rmtree(out, ignore_errors=True)
    (out / "shards").mkdir(parents=True)
    for f in ("index.json", "tokenizer.json"):
        os.link(idx / f, out / f)
    src_dir = next(p for p in (idx / "shards").iterdir() if not p.name.startswith("."))
    man = json.loads((src_dir / "manifest.json").read_text())
    shard = Path(man["shard_path"])
    for c in range(copies):
        base = out / "tok" / f"copy{c:03d}"
        base.parent.mkdir(exist_ok=True)
        for ext in (".npy", ".idx.npy"):
            os.link(str(shard)[:-4] + ext, str(base) + ext)
        d = out / "shards" / f"copy{c:03d}"
        d.mkdir()
        for f in src_dir.iterdir():
            if f.name != "manifest.json":
                os.link(f, d / f.name)
        write_json(d / "manifest.json", dict(man, key=d.name, shard_name=d.name,
                                             shard_path=str(base) + ".npy"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/trace-bench")
    ap.add_argument("--sizes", default="30e6,100e6", help="synthetic single-shard sizes")
    ap.add_argument("--copies", type=int, default=10, help="shards in the linked large index")
    args = ap.parse_args()
    from tokenizers import Tokenizer

    from olmo2.data.demo import build_demo_corpus
    from olmo2.data.sources import dolma2_tokenizer_path
    from olmo2.trace.store import open_index

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_start": os.getloadavg()}
    print(f"CPU: {results['cpu']} x{results['cores']}, load average "
          f"{results['load_start'][0]:.1f} (shared machine: times are noisy)")
    demo = build_demo_corpus()

    # 1. demo corpus
    data = tokenized(demo.train_path, str(demo.tokenizer_path), work / "demo-tok")
    results["demo_build"] = b = build(data, work / "demo-idx")
    index = open_index(work / "demo-idx")
    print(f"demo index: {b['tokens']:,} tokens, build {b['seconds']:.1f}s = {b['tok_s']:,.0f} tok/s "
          f"({b['tok_per_cpu_s']:,.0f} per CPU-second),"
          f" {b['bytes_per_token']:.2f} index bytes/token (+4 the shard), peak RSS "
          f"{b['peak_rss_mb']:,.0f} MB")
    texts = texts_200(index.tokenizer, demo.train_path, demo.val_path)
    q = results["demo_query"] = time_queries(index, texts)
    tokens = np.asarray(index.shards[0].tokens)
    from olmo2.trace.rank import word_starts
    from olmo2.trace.query import longest
    for name, text in texts.items():
        enc = index.tokenizer.encode(text)
        ids = np.asarray(enc.ids)
        starts = np.flatnonzero(word_starts(text, enc.offsets))
        t0 = time.perf_counter()
        want = scan_longest(tokens, ids, starts, index.eos_id)
        t_scan = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = longest(index, ids, starts).length.tolist()
        t_sa = time.perf_counter() - t0
        assert got == want, name
        q[name].update(scan_s=t_scan, sa_longest_s=t_sa)
        print(f"  query {name:18s} {q[name]['tokens']} tok: trace {q[name]['median_s'] * 1e3:6.0f} ms"
              f" ({q[name]['spans']} spans); longest matches SA {t_sa * 1e3:5.0f} ms vs scan "
              f"{t_scan * 1e3:6.0f} ms = {t_scan / t_sa:5.0f}x; memorised "
              f"{q[name]['memorised']:.0%} in {q[name]['memorised_s'] * 1e3:.0f} ms")

    # 2. dolma2 tokenizer (3-byte tokens)
    d2 = tokenized(demo.train_path, str(dolma2_tokenizer_path()), work / "dolma2-tok")
    results["dolma2_build"] = b = build(d2, work / "dolma2-idx")
    print(f"dolma2 index: {b['tokens']:,} tokens, {b['tok_s']:,.0f} tok/s "
          f"({b['tok_per_cpu_s']:,.0f} per CPU-second), "
          f"{b['bytes_per_token']:.2f} bytes/token, peak RSS {b['peak_rss_mb']:,.0f} MB")
    tok = Tokenizer.from_file(str(dolma2_tokenizer_path()))
    dtexts = texts_200(tok, demo.train_path, demo.val_path)

    # 3. single shards of growing size
    results["scale"] = []
    last = None
    for size in [int(float(s)) for s in args.sizes.split(",") if s]:
        data = synthetic(d2, size, work / f"syn-{size}")
        b = build(data, work / f"syn-{size}-idx")
        qq = time_queries(open_index(work / f"syn-{size}-idx"), dtexts, runs=3)
        results["scale"].append({"size": size, "build": b, "query": qq})
        last = (data, work / f"syn-{size}-idx", b["tokens"])
        print(f"single shard {b['tokens'] / 1e6:,.0f}M tokens: build {b['seconds']:.0f}s = "
              f"{b['tok_s']:,.0f} tok/s ({b['tok_per_cpu_s']:,.0f} per CPU-second), "
              f"{b['bytes_per_token']:.2f} B/tok, peak RSS "
              f"{b['peak_rss_mb']:,.0f} MB; " + _fmt(qq))

    # 4. many shards: hard-linked copies of the largest
    if last and args.copies > 1:
        big = linked_index(last[1], last[0], args.copies, work / "linked-idx")
        t0 = time.perf_counter()
        idx = open_index(big)
        t_open = time.perf_counter() - t0
        qq = time_queries(idx, dtexts, runs=3)
        results["linked"] = {"shards": args.copies, "tokens": idx.total_tokens,
                             "open_s": t_open, "query": qq}
        print(f"{args.copies} shards, {idx.total_tokens / 1e9:.2f}B tokens: open {t_open * 1e3:.0f} ms; "
              + _fmt(qq))

    # projection for OLMo-mix-1124
    ref = results["scale"][-1]["build"] if results["scale"] else results["dolma2_build"]
    core_h = OLMO_MIX_TOKENS / ref["tok_per_cpu_s"] / 3600
    results["projection"] = p = {
        "tokens": OLMO_MIX_TOKENS, "index_tb": OLMO_MIX_TOKENS * ref["bytes_per_token"] / 1e12,
        "shards_tb": OLMO_MIX_TOKENS * 4 / 1e12, "build_cpu_hours": core_h,
        "shard_tokens": ref["tokens"], "peak_rss_mb": ref["peak_rss_mb"]}
    print(f"OLMo-mix-1124 ({OLMO_MIX_TOKENS / 1e12:.1f}T tokens): index {p['index_tb']:.1f} TB "
          f"(+{p['shards_tb']:.1f} TB token shards, already on disk); build "
          f"{core_h:,.0f} CPU-hours at the measured {ref['tok_per_cpu_s']:,.0f} tok per CPU-second per "
          f"{ref['tokens'] / 1e6:,.0f}M-token shard (peak {ref['peak_rss_mb']:,.0f} MB each)")
    results["load_end"] = os.getloadavg()
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"load average at the end {results['load_end'][0]:.1f}; results -> {work / 'results.json'}")


if __name__ == "__main__":
    main()
