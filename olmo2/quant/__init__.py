"""Weight-only quantization (int8, int4, bf16) for CPU inference, and its kernels.

Python API (what `olmo2 generate/chat/serve --quant` and the benchmarks use):

    import torch
    from olmo2 import Olmo2
    from olmo2.quant import quantize_model, save_quantized

    model = Olmo2.from_pretrained(DIR, quant="int8")      # quantize on the fly at load
    model = Olmo2.from_pretrained(QUANT_DIR)              # an `olmo2 quantize` output loads as stored
    model = quantize_model(Olmo2.from_pretrained(DIR), "int4", group_size=128)  # in place
    save_quantized(model, "out/", tokenizer=tok)          # what `olmo2 quantize` writes

    from olmo2.quant.kernels import choose, cpu_kind      # which kernel runs where, and why
    from olmo2.quant.report import quality_report         # ppl / KL / top-1 vs bf16

CLI: `olmo2 quantize MODEL --bits 8|4 [--group-size G] --out DIR [--report]`, and
`--quant {none,bf16,int8,int4}` on generate, chat, serve, score and eval.

Modules: formats.py (the tensor formats), kernels.py (run-time kernel choice, env
OLMO2_QUANT_KERNEL), native.py + native/*.c (our C kernels), linear.py (the
quantized modules), f32.py + native/float.c (fp32 decode on our GEMV where the CPU lacks
AVX-512, `--quant none`), swap.py (plan + module swap),
io.py (checkpoints + the shared load), report.py (quality report).

The quantized modules take and return the model's compute dtype: attention, norms and
RoPE are untouched; only the weight storage and the matmuls change.
"""
from __future__ import annotations

import importlib

_PUBLIC = {
    "quantize_model": "olmo2.quant.swap",
    "QuantConfig": "olmo2.quant.swap",
    "save_quantized": "olmo2.quant.io",
    "load_for_inference": "olmo2.quant.io",
    "QUANT_CHOICES": "olmo2.quant.io",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'olmo2.quant' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
