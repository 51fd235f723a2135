"""Where a decode process's peak RSS comes from, phase by phase (issue 9: peak RSS ≤ 1.15× weights).

    python benchmarks/peak_rss.py --model DIR --precision bf16      # one precision, one process
    python benchmarks/peak_rss.py --model DIR --precision all       # fp32/bf16/int8/int4, one process each
    python benchmarks/peak_rss.py --model DIR --baseline            # a process that only imports torch + olmo2

It runs what `benchmarks/cpu_decode.py`'s olmo2 worker runs — `load_model(..., quant=P)`,
a `Decoder`, the 8 + 3 token warm-up, then prompt + new greedy tokens — and after each
phase reads /proc/self/status: VmRSS (now), VmHWM (the peak *within the phase*: the
kernel's high-water mark is reset between phases by writing 5 to /proc/self/clear_refs),
and the split of the resident set into anonymous memory (RssAnon: heap, tensors) and
file pages (RssFile: the mmapped checkpoint, shared libraries). The process's peak is
the largest phase peak: the figure cpu_decode.py's headline `ru_maxrss` gives, which reads
the same high-water mark (so the resets leave `ru_maxrss` itself useless here).

Bytes of weights, two ways: "per token" is cpu_decode.py's definition (every tensor but
the embedding table, plus one of its rows: what a decode step reads, what the 1.15× goal
is stated against), "in memory" is what the model's modules hold resident — the
state_dict tensors except the ones that are views of a file mapping, plus the packed
copies kernels keep (`_packed`, oneDNN's blocked bf16 weights).

Run one 1B process at a time on a shared machine (`nice`); RSS barely depends on threads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
GiB = 2**30


def status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0; ru_maxrss reads the same mark)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Phases:
    """Record (name, peak within the phase, RSS after, anon, file) and reset the peak."""

    def __init__(self):
        self.rows: list[dict] = []
        reset_peak()

    def mark(self, name: str, **extra) -> None:
        s = status()
        self.rows.append(dict(phase=name, peak=s["VmHWM"], rss=s["VmRSS"], anon=s["RssAnon"], file=s["RssFile"],
                              **extra))
        reset_peak()


def mapped_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process's file-backed mappings of .safetensors files."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5].endswith(".safetensors"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi))
    return out


def in_memory_bytes(model) -> dict[str, int]:
    """Bytes the modules hold: anonymous tensors, tensors that are file views, packed copies."""
    import torch
    ranges = mapped_ranges()
    anon = file = packed = 0
    seen = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "cpu" or t.numel() == 0:
            continue
        st = t.untyped_storage()
        if st.data_ptr() in seen:
            continue
        seen.add(st.data_ptr())
        if any(lo <= st.data_ptr() < hi for lo, hi in ranges):
            file += st.nbytes()
        else:
            anon += st.nbytes()
    for m in model.modules():
        for p in getattr(m, "_packed", {}).values():
            for t in p if isinstance(p, tuple) else (p,):
                if isinstance(t, torch.Tensor):
                    # an opaque oneDNN tensor reports its logical size (blocked layouts pad
                    # little for these shapes); aten's packed tensors are ordinary ones
                    packed += t.numel() * t.element_size()
    return dict(anon=anon, file_views=file, packed=packed)


def run_one(args) -> dict:
    ph = Phases()
    import torch
    ph.mark("import torch")
    torch.set_num_threads(args.threads)
    from cpu_decode import _prompt, stored_tensors, weight_bytes_per_token

    from olmo2.checkpoint import load_model
    from olmo2.infer.decoder import Decoder
    from olmo2.infer.generate import iter_tokens
    from olmo2.infer.sampling import SamplingParams
    from olmo2.quant import io, linear, native  # noqa: F401  (what load_model imports)
    native.available()  # the kernel library is loaded on first use; count it here, not in load
    ph.mark("import olmo2 (+ native lib)")
    if args.baseline:
        return dict(phases=ph.rows, peak=max(r["peak"] for r in ph.rows))
    t = time.perf_counter()
    # as `olmo2 generate --quant P` loads it (fp32: --quant none, the CLI's default)
    model = load_model(args.model, dtype=torch.float32, quant="none" if args.precision == "fp32" else args.precision)
    load_s = time.perf_counter() - t
    ph.mark("load_model")
    V = model.config.vocab_size
    ids = torch.tensor([[i % V for i in _prompt(args.prompt_len)]])
    greedy = SamplingParams(temperature=0)
    dec = Decoder(model, 1, args.prompt_len + args.new_tokens, compile=bool(args.compile))
    ph.mark("Decoder (KV cache)", kv_bytes=dec.cache.nbytes())
    for _ in iter_tokens(model, ids[:, :8], 3, greedy, decoder=dec):
        pass
    ph.mark("warm-up 8 + 3")
    dec.reset()
    it = iter_tokens(model, ids, args.new_tokens, greedy, decoder=dec)
    t = time.perf_counter()
    toks = [int(next(it)[0])]
    t1 = time.perf_counter()
    ph.mark(f"prefill {args.prompt_len}")
    toks += [int(x[0]) for x in it]
    t2 = time.perf_counter()
    ph.mark(f"decode {args.new_tokens}")
    stored = stored_tensors(model)  # not state_dict(): that rebuilds dropped plain copies
    return dict(phases=ph.rows, peak=max(r["peak"] for r in ph.rows),
                load_s=load_s, prompt_tok_s=args.prompt_len / (t1 - t), decode_tok_s=(len(toks) - 1) / (t2 - t1),
                tokens=toks, weight_bytes_per_token=weight_bytes_per_token(stored),
                weight_bytes_total=sum(v.numel() * v.element_size() for v in stored.values()),
                in_memory=in_memory_bytes(model), dynamo_imported="torch._dynamo" in sys.modules)


def print_report(prec: str, r: dict, base: int | None) -> None:
    print(f"\n## {prec}" + (f"  (load {r['load_s']:.1f} s, prompt {r['prompt_tok_s']:.1f} tok/s, "
                             f"decode {r['decode_tok_s']:.2f} tok/s)" if "load_s" in r else ""))
    print("| phase | peak in phase | RSS after | anon | file |")
    print("|---|---:|---:|---:|---:|")
    for row in r["phases"]:
        print(f"| {row['phase']} | {row['peak'] / GiB:.3f} | {row['rss'] / GiB:.3f} | {row['anon'] / GiB:.3f} | "
              f"{row['file'] / GiB:.3f} |")
    peak = r["peak"]
    line = f"peak {peak / GiB:.3f} GiB"
    if "weight_bytes_per_token" in r:
        wt, wa = r["weight_bytes_per_token"], r["weight_bytes_total"]
        mem = r["in_memory"]
        line += (f"; weights per token {wt / GiB:.3f} GiB (ratio {peak / wt:.2f}×), state_dict total "
                 f"{wa / GiB:.3f} GiB (ratio {peak / wa:.2f}×); modules hold anon {mem['anon'] / GiB:.3f} + file "
                 f"views {mem['file_views'] / GiB:.3f} + packed {mem['packed'] / GiB:.3f} GiB")
        if base:
            line += f"; peak − import baseline {(peak - base) / GiB:.3f} GiB ({(peak - base) / wt:.2f}× per-token weights)"
    if r.get("dynamo_imported"):
        line += "; torch._dynamo was imported"
    print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/olmo2-bench/bench/olmo2-1b-random")
    ap.add_argument("--precision", default="all", help="fp32, bf16, int8, int4 or all")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--baseline", action="store_true", help="only import torch and olmo2")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return

    def spawn(prec: str, baseline: bool = False) -> dict:
        cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--precision", prec, "--threads",
               str(args.threads), "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)]
        cmd += ["--compile"] * args.compile + ["--baseline"] * baseline
        r = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        if r.returncode != 0 or not lines:
            sys.exit(f"{prec}: worker failed (exit {r.returncode}): {r.stderr.strip()[-2000:]}")
        return json.loads(lines[-1][len("RESULT "):])

    print(f"load average {os.getloadavg()[0]:.1f}; {args.threads} thread(s); prompt {args.prompt_len} + "
          f"{args.new_tokens} new; {args.model}")
    base = spawn("fp32", baseline=True)
    print_report("import baseline (torch + olmo2, nothing loaded)", base, None)
    results = {"baseline": base}
    precs = ("fp32", "bf16", "int8", "int4") if args.precision == "all" else tuple(args.precision.split(","))
    for p in precs:
        results[p] = spawn(p)
        print_report(p, results[p], base["peak"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
