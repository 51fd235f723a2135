"""Whole-model decode tok/s of one quantized model under two or more kernels, alternating in
one process (the A/B the kernel choice rests on; cpu_decode.py is the cross-system table).

    python benchmarks/quant_decode_ab.py --model DIR --quant int8 --kernels native,aten --threads 1
    python benchmarks/quant_decode_ab.py --model DIR --quant bf16 --kernels native,mkldnn,aten
    python benchmarks/quant_decode_ab.py --model DIR --quant int8 --kernels native,aten --prefill --rounds 5
    python benchmarks/quant_decode_ab.py --model DIR --quant none --kernels reference,native-avx2 --threads 2

Loads MODEL once with `--quant` (quantized at load), then for `--rounds` rounds runs each
kernel in turn (OLMO2_QUANT_KERNEL; `native-avx2` = native on its AVX2 path): prefill a
fixed `--prompt-len` random prompt, then `--tokens` greedy one-token steps through the
Decoder (static KV cache, eager), timing only the steps. Alternating within one process
puts every kernel under the same machine load, which on a shared host drifts more between
processes than the kernels differ. Prints per-round tok/s, each kernel's median, and the
ratio of each kernel's per-round tok/s to the first kernel's in the same round.
`--prefill` times the prompt instead (prompt tok/s of `Decoder.start` on a `--prompt-len`
prompt, default 128: one prefill chunk, the LM head on its last position only, as
cpu_decode.py's prompt column), and compares each kernel's greedy first token.

`--quant none` is the fp32 model with every linear made a NativeF32Linear (olmo2/quant/f32.py)
whatever this CPU would choose: kernel `reference` is then plain F.linear (MKL), `native-avx2`
the native fp32 GEMV on its AVX2 path (what an AVX2-only CPU runs), `native` its AVX-512 path.

Kernel `native-rows` is `native` with its GEMMs off (native.per_row()): int8/int4 prompts then
run gemv.c's per-row kernels, as they did before gemm.c / gemm4.c (the A/B for those GEMMs:
`--quant int4 --kernels native,native-vnni,native-rows --prefill`); `native-vnni` is `native`
with AMX off (int4 prefill on gemm4.c's AVX-512 VNNI GEMM instead of gemm4_amx.c).

For bf16 both weight copies are kept (the plain weight native/aten read, and oneDNN's
reordered one): fine for a benchmark, twice the memory of a served model.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from quant_kernels import set_kernel  # benchmarks/ is on sys.path when run as a script


@torch.inference_mode()
def run(model, prompt: torch.Tensor, tokens: int) -> tuple[float, float, list[int]]:
    from olmo2.infer.decoder import Decoder
    dec = Decoder(model, 1, prompt.shape[1] + tokens + 1)
    logits = dec.start(prompt)
    out = []
    t, c = time.perf_counter(), time.process_time()
    for _ in range(tokens):
        tok = logits.argmax(-1)
        out.append(int(tok[0]))
        logits = dec.step(tok)
    return tokens / (time.perf_counter() - t), tokens / (time.process_time() - c), out


@torch.inference_mode()
def run_prefill(model, prompt: torch.Tensor) -> tuple[float, float, list[int]]:
    """Prompt tok/s (wall, and per CPU-second) of one prefill, and its greedy next token."""
    from olmo2.infer.decoder import Decoder
    dec = Decoder(model, 1, prompt.shape[1] + 2)
    t, c = time.perf_counter(), time.process_time()
    logits = dec.start(prompt)
    n = prompt.shape[1]
    return n / (time.perf_counter() - t), n / (time.process_time() - c), [int(logits.argmax(-1)[0])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--quant", required=True, choices=["none", "bf16", "int8", "int4"])
    ap.add_argument("--kernels", default="native,aten", help="comma list; the first is the ratio's base")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=None, help="default 16, or 128 with --prefill")
    ap.add_argument("--prefill", action="store_true", help="time the prompt's prefill instead of decode steps")
    args = ap.parse_args()
    if args.prompt_len is None:
        args.prompt_len = 128 if args.prefill else 16
    what = "prompt" if args.prefill else "decode"
    torch.set_num_threads(args.threads)
    from olmo2.checkpoint import load_model
    from olmo2.quant import native
    from olmo2.quant.linear import BF16Linear
    t = time.perf_counter()
    model = load_model(args.model, dtype=torch.float32, quant=None if args.quant == "none" else args.quant).eval()
    load_s = time.perf_counter() - t
    if args.quant == "none":  # the swap load_model makes on AVX2-only CPUs, made here on any CPU
        from olmo2.quant.f32 import NativeF32Linear
        for m in model.modules():
            if type(m) is torch.nn.Linear:
                m.__class__ = NativeF32Linear
    def keep_both_bf16_copies() -> None:
        """BF16Linear drops its plain weight when it packs oneDNN's copy (memory), and then
        native/aten rebuild it with to_dense() on every call; give it back, the pack stays."""
        for m in model.modules():
            if isinstance(m, BF16Linear) and m._plain_dropped:
                m.weight_bf16, m._plain_dropped = m._plain(), False

    keep_both_bf16_copies()
    kernels = args.kernels.split(",")
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"# {cpu}; torch {torch.__version__}; native: {native.isa() or native.reason()}; threads {args.threads}; "
          f"--quant {args.quant} (load {load_s:.1f} s); " +
          (f"prefill of a {args.prompt_len}-token prompt; " if args.prefill else
           f"{args.tokens} steps after a {args.prompt_len}-token prompt; ") +
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    def mode(k: str):
        """Select kernel k; the context it runs in (native-rows: the GEMMs off)."""
        set_kernel(k.removesuffix("-rows"))
        return native.per_row() if k.endswith("-rows") else contextlib.nullcontext()

    for k in kernels:  # warm-up: packs each kernel's layout, builds the native library
        with mode(k):
            run(model, prompt, 2)
            if args.prefill:
                run_prefill(model, prompt)
    # the mkldnn warm-up above packed (and dropped the plain weight): restore it once more, or
    # every later native/aten call would time a to_dense() of each weight (it did: 0.64 vs 6.5
    # tok/s for mkldnn, 2026-11-29 22:30)
    keep_both_bf16_copies()
    # tok/s of wall time, and tokens per CPU-second of this process: at 1 thread the latter
    # leaves out the time the OS gave the core to other jobs, the steadier figure on a
    # shared host (memory-bandwidth contention still shows in both)
    rates: dict[str, list[float]] = {k: [] for k in kernels}
    cpu: dict[str, list[float]] = {k: [] for k in kernels}
    toks: dict[str, list[int]] = {}
    for r in range(args.rounds):
        for k in kernels:
            with mode(k):
                rate, crate, toks[k] = run_prefill(model, prompt) if args.prefill else run(model, prompt, args.tokens)
            rates[k].append(rate)
            cpu[k].append(crate)
        print(f"round {r + 1}: " + ", ".join(f"{k} {rates[k][-1]:.2f} ({cpu[k][-1]:.2f}/CPU-s)" for k in kernels)
              + f" {what} tok/s", flush=True)
    base = kernels[0]
    for k in kernels:
        ratios = [a / b for a, b in zip(rates[k], rates[base])]
        cratios = [a / b for a, b in zip(cpu[k], cpu[base])]
        same = sum(a == b for a, b in zip(toks[k], toks[base]))
        print(f"{k}: median {statistics.median(rates[k]):.2f} {what} tok/s ({statistics.median(cpu[k]):.2f} per CPU-s); "
              f"vs {base} per round {min(ratios):.2f}-{max(ratios):.2f}x (per CPU-s "
              f"{min(cratios):.2f}-{max(cratios):.2f}x); greedy tokens equal to {base}'s: {same}/{len(toks[base])}")
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
