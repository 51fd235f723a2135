"""The quantized weight formats, as plain tensor transforms (no modules, no kernels).

    q, s = quantize_int8(w)                      # int8 [N, K], bf16 scale [N]
    w ≈ dequantize_int8(q, s)                    # |w - q·s| <= s/2 elementwise
    p, s, z = quantize_int4(w, group_size=128)   # uint8 [N, K/2] (2 nibbles), bf16 [N, K/G] ×2
    w ≈ dequantize_int4(p, s, z, 128)            # |w - ((q-8)·s + z)| <= s/2 + |z rounding|

int8 is symmetric per output channel (row), the format `aten._weight_int8pack_mm` and
fbgemm's per-channel qint8 take as is. int4 is asymmetric (min-max) per group of
`group_size` consecutive input columns, with the zero point folded into a float offset:
`w = (q - 8)·scale + zero`, q in 0..15 — exactly the convention of aten's CPU int4 kernel
(`_weight_int4pack_mm_for_cpu`), so its packed copy is made from these tensors at load.
Asymmetric because a group's min and max are rarely opposite: min-max uses all 16 levels.

Scales (and int4 zeros) are stored in **bf16**, the dtype the aten kernels read them in
(they take scales in the activation dtype, and they are only fast with bf16
activations). Storing what the kernel reads means the fast path and the pure-PyTorch
fallback dequantize to the *same* weights; they differ only in activation rounding. The
int8 scale is rounded *up* to bf16 so that w/s never exceeds 127 and the error bound
|w - q·s| <= s/2 holds exactly; the int4 scale is rounded up likewise (15 steps always
span max - min), and the zero's bf16 rounding error is the only extra term.

Nibble order: column 2j is the low nibble of byte j, column 2j+1 the high one.
"""
from __future__ import annotations

import torch

INT4_GROUP_SIZES = (32, 64, 128, 256)


def _bf16_round_up(x: torch.Tensor) -> torch.Tensor:
    """The smallest bf16 value >= x (x >= 0 fp32): round to nearest, then step up one ulp
    where that went down. bf16 is the top half of fp32, so +1 on the int16 view is an ulp.
    No `if low.any()`: a data-dependent branch would split a compiled decode step in two
    where an embedding quantizes its looked-up rows (linear.py, `_RowTable.over_rows`)."""
    b = x.to(torch.bfloat16)
    low = b.float() < x
    return torch.where(low, (b.view(torch.int16) + 1).view(torch.bfloat16), b)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q int8 [N, K] in -127..127, scale bf16 [N])."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1)
    # tiny > 0 keeps an all-zero row finite (its q is 0 whatever the scale).
    scale = _bf16_round_up((amax / 127.0).clamp_min(torch.finfo(torch.bfloat16).tiny))
    q = torch.round(w / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q·scale as a [N, K] float tensor of `dtype` (scale applied in fp32, then cast)."""
    return (q.float() * scale.float()[:, None]).to(dtype)


def int4_group_fits(in_features: int, group_size: int) -> bool:
    """Whether a K-column weight can be stored int4 with this group size (aten's kernel also
    needs an even K, which any group size here implies)."""
    return group_size in INT4_GROUP_SIZES and in_features % group_size == 0


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise int4: (packed uint8 [N, K/2], scale bf16 [N, K/G], zero bf16 [N, K/G])."""
    N, K = w.shape
    if not int4_group_fits(K, group_size):
        raise ValueError(f"int4 group size {group_size} does not divide in_features {K}")
    g = w.detach().float().reshape(N, K // group_size, group_size)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    scale = _bf16_round_up(((hi - lo) / 15.0).clamp_min(torch.finfo(torch.bfloat16).tiny))
    zero = (lo + 8.0 * scale.float()).to(torch.bfloat16)
    q = torch.round((g - zero.float()[..., None]) / scale.float()[..., None] + 8.0).clamp_(0, 15).to(torch.uint8)
    q = q.reshape(N, K)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed.contiguous(), scale, zero


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] → the codes 0..15 as uint8 [N, K] (inverse of the packing above)."""
    N, half = packed.shape
    out = torch.empty(N, half * 2, dtype=torch.uint8, device=packed.device)
    out[:, 0::2] = packed & 0xF
    out[:, 1::2] = packed >> 4
    return out


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(q - 8)·scale + zero as a [N, K] float tensor of `dtype` (computed in fp32)."""
    q = unpack_int4(packed).float()
    N, K = q.shape
    g = q.reshape(N, K // group_size, group_size)
    w = (g - 8.0) * scale.float()[..., None] + zero.float()[..., None]
    return w.reshape(N, K).to(dtype)


def int4_codes_int32(packed: torch.Tensor) -> torch.Tensor:
    """The codes as int32 [N, K]: the input `aten._convert_weight_to_int4pack_for_cpu` takes."""
    return unpack_int4(packed).to(torch.int32)


def int4_scales_and_zeros(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """[K/G, N, 2] (scale, zero) in bf16: the layout aten's int4 kernel reads."""
    return torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
