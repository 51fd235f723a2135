"""The fused batch-1 decode step (olmo2/infer/fused.py) against the aten step it replaces,
alternating in one process on the same model (issue 9).

    python benchmarks/fused_decode_ab.py --model DIR --precision int4 --threads 2 --rounds 8
    python benchmarks/fused_decode_ab.py --quick       # tiny-demo preset: a smoke run

Two `Decoder`s over one loaded model: `fused` (the default) and `aten` (built under
OLMO2_FUSED_DECODE=0: the fixed-shape step that attends over the whole cache under a
mask). Each round, each side prefills the same `--prompt-len` random prompt and times
`--tokens` greedy steps; the order flips every round (ABBA), so a drift in the host's load
hits both sides alike. Printed: ms per token per round, medians, aten/fused per round
(the speedup; its median and range), the bandwidth probe per round, and before timing a
teacher-forced check that the two steps agree (max |logit difference| relative to the
largest logit, argmax agreement): quantized weights amplify last-bit differences (see
tests/test_fused_decode.py), fp32 agrees to ~1e-6.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_decode import cpu_description, parse_one_model  # noqa: E402
from quant_kernels import bandwidth_probe  # noqa: E402

QUANT = {"fp32": None, "bf16": "bf16", "int8": "int8", "int4": "int4"}


def main() -> None:
    args, model_dir = parse_one_model(__doc__, QUANT, tokens=32, prompt_len=128,
                                      quick=dict(rounds=2, tokens=8, prompt_len=16))
    from olmo2.checkpoint import load_model
    from olmo2.infer.decoder import Decoder

    torch.set_num_threads(args.threads)
    model = load_model(model_dir, dtype=torch.float32, quant=QUANT[args.precision])
    V, cap = model.config.vocab_size, args.prompt_len + args.tokens + 24
    ids = torch.randint(0, V, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    fused = Decoder(model, 1, cap)
    if fused.fused_off:
        sys.exit(f"the fused step does not run here: {fused.fused_off}")
    os.environ["OLMO2_FUSED_DECODE"] = "0"
    aten = Decoder(model, 1, cap)
    del os.environ["OLMO2_FUSED_DECODE"]
    print(f"{cpu_description()}\n{model_dir.name} {args.precision}, {args.threads} thread(s), prompt "
          f"{args.prompt_len}, {args.tokens} tokens a side a round; load average {os.getloadavg()[0]:.1f}")

    with torch.inference_mode():
        lf, la = fused.start(ids), aten.start(ids)
        worst, agree, n = 0.0, 0, 16
        for _ in range(n):  # teacher-forced: the aten step's argmax into both
            tok = la.argmax(-1)
            agree += int(torch.equal(lf.argmax(-1), tok))
            lf, la = fused.step(tok), aten.step(tok)
            worst = max(worst, float((lf - la).abs().max() / la.abs().max()))
        print(f"agreement: max |fused - aten| / max |logit| = {worst:.2e}; argmax equal on {agree}/{n}")

        ms = {"aten": [], "fused": []}
        for r in range(args.rounds):
            bw = bandwidth_probe(1)
            for side in (("aten", "fused") if r % 2 == 0 else ("fused", "aten")):
                dec = fused if side == "fused" else aten
                dec.reset()
                nxt = dec.start(ids).argmax(-1)
                t = time.perf_counter()
                for _ in range(args.tokens):
                    nxt = dec.step(nxt).argmax(-1)
                ms[side].append((time.perf_counter() - t) / args.tokens * 1e3)
            print(f"round {r}: aten {ms['aten'][-1]:.1f} ms, fused {ms['fused'][-1]:.1f} ms, "
                  f"speedup {ms['aten'][-1] / ms['fused'][-1]:.2f}x, probe {bw:.1f} GB/s", flush=True)
    sp = [a / f for a, f in zip(ms["aten"], ms["fused"])]
    print(f"median ms/token: aten {statistics.median(ms['aten']):.1f}, fused {statistics.median(ms['fused']):.1f}; "
          f"speedup per round median {statistics.median(sp):.2f}x (min {min(sp):.2f}, max {max(sp):.2f}); "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
