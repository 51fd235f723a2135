"""fp32 decode on olmo2's own GEMV (olmo2/quant/native/float.c) where the CPU lacks AVX-512.

    from olmo2.quant.f32 import use_native_f32
    n = use_native_f32(model)     # nn.Linear -> NativeF32Linear in place where choose() says so

Why: on the AMD Zen 3 machine kind PyTorch's fp32 GEMV (MKL sgemv) streamed ~13.6 GB/s
while llama.cpp's F32 kernel pulled 22-25 GB/s (docs/cpu-baseline.md); on the Intel host
MKL is at the bandwidth, so `kernels.choose("fp32", "decode")` keeps it there ("torch")
and picks "native" only on CPUs without AVX-512 or under OLMO2_QUANT_KERNEL=native.

How: `NativeF32Linear` *is* an nn.Linear (same parameters, same state dict, same repr
fields), so checkpoints, HF parity, `.to()`, and optimizers see nothing new; the swap is
`m.__class__ = NativeF32Linear` (no copy, no memory). Its forward takes the native kernel
only when every one of these holds, else it is exactly `F.linear`:
- no autograd through this call (grad disabled, or neither weight nor input wants grad):
  the C kernel has no backward, so training, FSDP and gradient checks stay plain;
- fp32 weight and input on the CPU, dense weight, K a multiple of native.F32_K_MULTIPLE;
- fewer than kernels.PREFILL_ROWS rows (decode: bandwidth-bound; prefill keeps MKL's GEMM,
  which reuses each weight load across rows);
- `choose("fp32", "decode")` says "native" (read per call through linear._kernel_for, a
  constant to torch.compile, so a compiled decode step stays one graph).

Who swaps: olmo2.checkpoint.load_model when the caller passes `quant="none"` (what every
inference verb's `--quant` flag passes: generate, chat, score, eval, serve). Training and
conversion load with quant=None and keep plain nn.Linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from olmo2.quant import native
from olmo2.quant.kernels import PREFILL_ROWS, choose
from olmo2.quant.linear import _kernel_for


class NativeF32Linear(nn.Linear):
    """nn.Linear whose no-grad decode calls run native.f32_mm (module docstring)."""

    def _native_weight(self) -> bool:
        """Whether this weight runs on float.c's GEMV for decode-sized inputs: dense fp32 on the
        CPU, K a multiple of its block (a constant of the shape, cached on first call), and the
        kernel choice for fp32 decode (olmo2/quant/kernels.py) says native."""
        w = self.weight
        if w.dtype is not torch.float32 or w.device.type != "cpu":
            return False
        fits = self.__dict__.get("_f32_fits")
        if fits is None:
            fits = self.__dict__["_f32_fits"] = native.fits("fp32", self.in_features) and w.is_contiguous()
        return fits and _kernel_for("fp32", "decode", True) == "native"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.dtype is torch.float32 and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
                and self._native_weight()):
            x2 = x.reshape(-1, self.in_features)
            if x2.shape[0] < PREFILL_ROWS:
                y = native.f32_mm(x2, w)
                if self.bias is not None:
                    y = y + self.bias
                return y.view(x.shape[:-1] + (self.out_features,))
        return F.linear(x, w, self.bias)

    def decode_binding(self) -> tuple[str, tuple] | None:
        """As `_QuantLinear.decode_binding`: float.c's fp32 GEMV where forward would take it."""
        return ("f32", (self.weight,)) if self.bias is None and self._native_weight() else None

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_f32_fits", None)  # a new weight may have another layout
        super()._load_from_state_dict(*args, **kwargs)


def use_native_f32(model: nn.Module) -> int:
    """Switch each plain fp32 CPU nn.Linear in `model` to NativeF32Linear in place when
    `choose("fp32", "decode")` picks the native kernel for this CPU; returns how many.
    Subclasses of nn.Linear (quantized or LoRA modules, other wrappers) are left alone."""
    if choose("fp32", "decode") != "native":
        return 0
    n = 0
    for m in model.modules():
        if type(m) is nn.Linear and m.weight.dtype is torch.float32 and m.weight.device.type == "cpu":
            m.__class__ = NativeF32Linear
            n += 1
    return n
