"""Decode with the weights in huge pages (olmo2/infer/hugepages.py) against the same weights
where the loader left them, alternating in one process on one model (issue 9).

    python benchmarks/hugepages_ab.py --model DIR --precision int4 --threads 2 --rounds 8
    python benchmarks/hugepages_ab.py --quick          # tiny-demo preset: a smoke run

Loads MODEL once with OLMO2_HUGEPAGES=0, as olmo2 loaded it before huge pages: fp32 weights
are views of the memory-mapped checkpoint (4 KiB page-cache pages), quantized ones torch's
own heap allocations (4 KiB anonymous pages: this kernel's THP setting is `madvise`, and
torch does not ask). Then copies the same tensors into a huge-page arena
(`hugepages.Arena`, as `load_model` now does), keeping both, and each round points the
modules at one set, then the other (ABBA), and times `--tokens` greedy steps of one
`Decoder` (the fused step where it runs) after the same `--prompt-len` prompt. Printed:
ms per token per round, each side's median, the speed-up per round (before / huge; its
median and range), the bandwidth probe, how much of the arena the kernel backs with huge
pages, and the check that both sides give the same greedy tokens (the copies are the same
bits: they must).

`--cache` compares the KV cache instead (use a long `--prompt-len`, e.g. 1536): the weights
in huge pages on both sides, as `load_model` leaves them, and two Decoders, one with its
cache in torch's buffers (kvcache.HUGE_CACHE_BYTES out of reach while it is built), one in
an arena, as the Decoder now allocates it (olmo2/infer/kvcache.py).

Compare within one run only: the host's memory bandwidth drifts far more between runs
than within one.
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

QUANT = {"fp32": "none", "bf16": "bf16", "int8": "int8", "int4": "int4"}


def main() -> None:
    args, model_dir = parse_one_model(
        __doc__, QUANT, tokens=16, prompt_len=16, quick=dict(rounds=2, tokens=4),
        extra=lambda ap: ap.add_argument("--cache", action="store_true", help="A/B the KV cache (docstring)"))
    from olmo2.checkpoint import load_model
    from olmo2.infer import hugepages, kvcache
    from olmo2.infer.decoder import Decoder

    torch.set_num_threads(args.threads)
    if not args.cache:
        os.environ["OLMO2_HUGEPAGES"] = "0"
    model = load_model(model_dir, dtype=torch.float32, quant=QUANT[args.precision])
    os.environ.pop("OLMO2_HUGEPAGES", None)
    why = hugepages.why_not(model)
    if why:
        sys.exit(f"huge pages do not apply here: {why}")
    cap = args.prompt_len + args.tokens + 8
    if args.cache:
        keep, kvcache.HUGE_CACHE_BYTES = kvcache.HUGE_CACHE_BYTES, 1 << 62
        decs = {"before": Decoder(model, 1, cap)}
        kvcache.HUGE_CACHE_BYTES = keep
        decs["huge"] = Decoder(model, 1, cap)
        arena, moved = None, f"KV cache {decs['huge'].cache.nbytes() / 2**30:.2f} GiB a side"
        items, sets = [], {}
    else:
        items = hugepages.streamed_tensors(model)
        sets = {"before": [t for _, _, t in items]}
        arena = hugepages.Arena(sum(t.numel() * t.element_size() + hugepages.ALIGN for t in sets["before"]))
        with torch.no_grad():
            sets["huge"] = [arena.place(t) for t in sets["before"]]
        dec = Decoder(model, 1, cap)
        decs = {"before": dec, "huge": dec}
        moved = (f"{len(items)} tensors, {sum(t.numel() * t.element_size() for t in sets['before']) / 2**30:.2f} "
                 f"GiB moved, {arena.huge_bytes() / 2**30:.2f} GiB of the arena in huge pages")
    print(f"{cpu_description()}\n{model_dir.name} {args.precision}, {args.threads} thread(s), prompt "
          f"{args.prompt_len}, {args.tokens} tokens a side a round; {moved} (THP {hugepages.thp_mode()}); "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    def use(side: str) -> Decoder:
        for (m, name, _), t in zip(items, sets.get(side, ())):
            hugepages.assign(m, name, t)
        return decs[side]

    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    ms = {"before": [], "huge": []}
    toks = {"before": None, "huge": None}
    with torch.inference_mode():
        for r in range(args.rounds):
            bw = bandwidth_probe(1)
            for side in (("before", "huge") if r % 2 == 0 else ("huge", "before")):
                dec = use(side)
                dec.reset()
                nxt = dec.start(ids).argmax(-1)  # start() re-binds the fused step to these tensors
                out = []
                t = time.perf_counter()
                for _ in range(args.tokens):
                    nxt = dec.step(nxt).argmax(-1)
                    out.append(int(nxt))
                ms[side].append((time.perf_counter() - t) / args.tokens * 1e3)
                toks[side] = toks[side] or out
            print(f"round {r}: before {ms['before'][-1]:.1f} ms, huge {ms['huge'][-1]:.1f} ms, "
                  f"speedup {ms['before'][-1] / ms['huge'][-1]:.2f}x, probe {bw:.1f} GB/s", flush=True)
    sp = [b / h for b, h in zip(ms["before"], ms["huge"])]
    print(f"median ms/token: before {statistics.median(ms['before']):.1f}, huge {statistics.median(ms['huge']):.1f}; "
          f"speedup per round median {statistics.median(sp):.2f}x (min {min(sp):.2f}, max {max(sp):.2f}); "
          f"greedy tokens equal: {toks['before'] == toks['huge']}; fused step: {dec.fused_off or 'on'}; "
          f"huge pages now {arena.huge_bytes() / 2**30 if arena else 0:.2f} GiB (weights); "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
