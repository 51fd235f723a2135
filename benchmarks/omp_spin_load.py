"""int4 decode tok/s under OpenMP wait settings, on an idle host and beside one busy process
(olmo2/infer/omp.py: why the CLI sets GOMP_SPINCOUNT=10000).

    python benchmarks/omp_spin_load.py --model Q4DIR --rounds 3
    python benchmarks/omp_spin_load.py --model Q4DIR --settings default,spin10k --rounds 8 --no-hog

Each setting runs in a fresh process (libgomp reads its environment once, when torch loads
it): load the model (a quantized checkpoint from `olmo2 quantize` loads in seconds), a
Decoder, prefill a fixed 128-token prompt, 4 warm-up steps, then `--tokens` timed greedy
steps. Settings alternate within each round, so drift in the host hits them alike. Then
the same again while one `yes > /dev/null` keeps a core busy (the stand-in for a browser
or a build on a laptop), unless `--no-hog`. Printed: tok/s per setting per round, medians,
and each setting's per-round ratio to `default`.

Settings: default (libgomp's own: spin up to 300k rounds), spin1k/spin3k/spin10k/spin100k
(GOMP_SPINCOUNT), passive (OMP_WAIT_POLICY=PASSIVE), 1thread (default spin, 1 thread).
Not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = {"default": {}, "spin1k": {"GOMP_SPINCOUNT": "1000"}, "spin3k": {"GOMP_SPINCOUNT": "3000"},
            "spin10k": {"GOMP_SPINCOUNT": "10000"}, "spin100k": {"GOMP_SPINCOUNT": "100000"},
            "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "1thread": {}}

WORKER = """
import sys, time, torch
from pathlib import Path
from olmo2.checkpoint import load_model
from olmo2.infer.decoder import Decoder
torch.set_num_threads(int(sys.argv[2]))
m = load_model(Path(sys.argv[1]), dtype=torch.float32)
ids = torch.randint(0, m.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))
n = int(sys.argv[3])
dec = Decoder(m, 1, 128 + n + 8)
with torch.inference_mode():
    nxt = dec.start(ids).argmax(-1)
    for _ in range(4):
        nxt = dec.step(nxt).argmax(-1)
    t = time.perf_counter()
    for _ in range(n):
        nxt = dec.step(nxt).argmax(-1)
print(n / (time.perf_counter() - t))
"""


def one(model: str, setting: str, threads: int, tokens: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(SETTINGS[setting])
    n = 1 if setting == "1thread" else threads
    r = subprocess.run([sys.executable, "-c", WORKER, model, str(n), str(tokens)], capture_output=True, text=True,
                       env=env, cwd=Path(__file__).resolve().parents[1])
    if r.returncode != 0:
        raise SystemExit(f"worker failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return float(r.stdout.strip().splitlines()[-1])


def phase(args, settings: list[str], label: str) -> None:
    rates = {s: [] for s in settings}
    for r in range(args.rounds):
        order = settings if r % 2 == 0 else settings[::-1]
        for s in order:
            rates[s].append(one(args.model, s, args.threads, args.tokens))
        print(f"{label} round {r + 1}: " + "  ".join(f"{s} {rates[s][-1]:.2f}" for s in settings), flush=True)
    print(f"{label} medians (tok/s): " + "  ".join(f"{s} {statistics.median(v):.2f}" for s, v in rates.items()))
    if "default" in rates:
        base = rates["default"]
        for s, v in rates.items():
            if s != "default":
                rat = [a / b for a, b in zip(v, base)]
                print(f"{label} {s}/default per round: median {statistics.median(rat):.2f}x "
                      f"(min {min(rat):.2f}, max {max(rat):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a checkpoint (an `olmo2 quantize --bits 4` output loads fastest)")
    ap.add_argument("--settings", default="default,spin10k,passive,1thread", help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-hog", action="store_true", help="only the idle phase")
    args = ap.parse_args()
    settings = [s for s in args.settings.split(",") if s]
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        raise SystemExit(f"error: --settings: {','.join(bad) or 'empty'}: use a comma list of {', '.join(SETTINGS)}")
    print(f"{args.model}, {args.threads} threads, {args.tokens} tokens; load average {os.getloadavg()[0]:.1f}")
    phase(args, settings, "idle")
    if not args.no_hog:
        hog = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
        try:
            phase(args, settings, "one busy core")
        finally:
            hog.kill()


if __name__ == "__main__":
    main()
