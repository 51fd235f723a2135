"""fp32 prompt processing with and without olmo2/infer/heap.py, alternating processes (issue 9).

    python benchmarks/prefill_heap_ab.py --model DIR --threads 2 --rounds 4

Each round runs two fresh processes, one per variant, in alternating order: `kept` (the
default: the Decoder raises glibc's mmap/trim thresholds) and `glibc` (OLMO2_HEAP=default:
glibc's own adaptive thresholds, what every run did before heap.py). The setting is
process-wide and glibc cannot go back to its adaptive thresholds once they are set, so
the A/B cannot alternate inside one process as quant_decode_ab.py does.

Each process does what cpu_decode.py's olmo2 worker does before its timed prompt —
`load_model(DIR, dtype=float32)` (weights mmapped), a Decoder sized prompt + 128, the 8 +
3 token warm-up — then times `--prefills` prefills of the same `--prompt-len` random
prompt (the first is the one cpu_decode.py's prompt tok/s reads), each: wall tok/s,
tokens per CPU-second of the process, and the minor page faults it took (getrusage).
Prints per-round figures, each variant's median, and kept/glibc per round.

`--in-process` is the steadier A/B on a shared host: one process (heap.py applied), and
before each prefill the trim threshold is set to 256 MiB (`kept`) or to 8 MiB (`trim8M`,
about what glibc's adaptive threshold settles at on the 1B: twice its largest freed block,
a [128, 8192] fp32 tensor), alternating every round, each setting given one untimed
prefill to settle. It reproduces the faults (~45-65k per prefill) without leaving the
process, so both variants see the same machine load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _prefill_setup(args):
    """(Decoder, prompt ids) for the fp32 model, after cpu_decode's warm-up (8-token prompt,
    3 greedy tokens), the same in both modes."""
    import torch
    torch.set_num_threads(args.threads)
    from olmo2.checkpoint import load_model
    from olmo2.infer.decoder import Decoder
    from olmo2.infer.generate import iter_tokens
    from olmo2.infer.sampling import SamplingParams
    model = load_model(args.model, dtype=torch.float32)
    ids = torch.randint(0, 100000, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    ids = ids % model.config.vocab_size
    dec = Decoder(model, 1, args.prompt_len + 128)
    for _ in iter_tokens(model, ids[:, :8], 3, SamplingParams(temperature=0), decoder=dec):
        pass
    return dec, ids


def worker(args) -> None:
    import resource
    import time

    import torch
    from olmo2.infer.heap import keep_freed_memory
    dec, ids = _prefill_setup(args)
    out = []
    with torch.inference_mode():
        for _ in range(args.prefills):
            dec.reset()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t, c = time.perf_counter(), time.process_time()
            logits = dec.start(ids)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            out.append(dict(tok_s=args.prompt_len / wall, tok_cpu_s=args.prompt_len / cpu,
                            faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0,
                            token=int(logits.argmax(-1)[0])))
    print("RESULT " + json.dumps(dict(kept=keep_freed_memory(), prefills=out)), flush=True)


def in_process(args) -> None:
    """The trim-threshold A/B inside one process (module docstring)."""
    import ctypes
    import resource
    import time

    import torch
    from olmo2.infer.heap import TRIM_THRESHOLD, _M_TRIM_THRESHOLD, _glibc
    libc = _glibc()
    if libc is None:
        sys.exit("--in-process needs glibc")
    dec, ids = _prefill_setup(args)
    trims = {"kept": TRIM_THRESHOLD, "trim8M": 8 << 20}
    rate: dict[str, list[float]] = {k: [] for k in trims}
    crate: dict[str, list[float]] = {k: [] for k in trims}
    print(f"# in one process, {args.threads} threads, {args.prompt_len}-token prompt; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    with torch.inference_mode():
        for r in range(args.rounds):
            line = []
            for k in (list(trims) if r % 2 == 0 else list(trims)[::-1]):
                libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trims[k]))
                dec.reset()
                dec.start(ids)  # settle under this threshold
                dec.reset()
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t, c = time.perf_counter(), time.process_time()
                dec.start(ids)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                rate[k].append(args.prompt_len / wall)
                crate[k].append(args.prompt_len / cpu)
                line.append(f"{k} {rate[k][-1]:.1f} tok/s ({crate[k][-1]:.1f}/CPU-s, "
                            f"{resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0} faults)")
            print(f"round {r + 1}: " + "; ".join(line) + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD))
    ratios = [a / b for a, b in zip(rate["kept"], rate["trim8M"])]
    cratios = [a / b for a, b in zip(crate["kept"], crate["trim8M"])]
    print("; ".join(f"{k} median {statistics.median(rate[k]):.1f} tok/s ({statistics.median(crate[k]):.1f}/CPU-s)"
                    for k in trims) + f"; kept/trim8M per round {min(ratios):.2f}-{max(ratios):.2f}x "
          f"(median {statistics.median(ratios):.2f}; per CPU-s {min(cratios):.2f}-{max(cratios):.2f}x)")
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


def spawn(args, variant: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OLMO2_HEAP", None)
    if variant == "glibc":
        env["OLMO2_HEAP"] = "default"
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--threads", str(args.threads),
           "--prompt-len", str(args.prompt_len), "--prefills", str(args.prefills)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        sys.exit(f"{variant} worker failed (exit {r.returncode}): {r.stderr.strip()[-300:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    if res["kept"] != (variant == "kept"):
        sys.exit(f"{variant} worker: keep_freed_memory() returned {res['kept']} (not glibc?)")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--prefills", type=int, default=2, help="timed prefills per process (the first is cpu_decode's)")
    ap.add_argument("--in-process", action="store_true", help="the trim-threshold A/B in one process")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.in_process:
        return in_process(args)
    variants = ["kept", "glibc"]
    print(f"# {args.threads} threads, {args.prompt_len}-token prompt, {args.prefills} prefills per process; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    first: dict[str, list[dict]] = {v: [] for v in variants}
    later: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]  # neither always runs first
        for v in order:
            res = spawn(args, v)["prefills"]
            first[v].append(res[0])
            later[v] += res[1:]
        print(f"round {r + 1}: " + "; ".join(
            f"{v} " + " / ".join(f"{p['tok_s']:.1f} tok/s ({p['tok_cpu_s']:.1f}/CPU-s, {p['faults']} faults)"
                                 for p in [first[v][-1]] + later[v][len(later[v]) - args.prefills + 1:])
            for v in variants) + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    for name, runs in (("first prefill", first), ("later prefills", later)):
        if not runs["kept"]:
            continue
        med = {v: (statistics.median(p["tok_s"] for p in runs[v]), statistics.median(p["tok_cpu_s"] for p in runs[v]),
                   statistics.median(p["faults"] for p in runs[v])) for v in variants}
        ratios = [a["tok_s"] / b["tok_s"] for a, b in zip(runs["kept"], runs["glibc"])]
        cratios = [a["tok_cpu_s"] / b["tok_cpu_s"] for a, b in zip(runs["kept"], runs["glibc"])]
        same = all(a["token"] == b["token"] for a, b in zip(runs["kept"], runs["glibc"]))
        print(f"{name}: " + "; ".join(f"{v} median {m[0]:.1f} tok/s ({m[1]:.1f}/CPU-s, {m[2]:.0f} faults)"
                                      for v, m in med.items()) +
              f"; kept/glibc per run {min(ratios):.2f}-{max(ratios):.2f}x (per CPU-s {min(cratios):.2f}-"
              f"{max(cratios):.2f}x); same greedy token: {same}")
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
