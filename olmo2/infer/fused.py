"""The batch-1 decode step with its glue in native code: the `Decoder`'s eager step for one
unpadded row (generate, chat, the server's single requests), when the model computes in fp32.

    why = fused.why_not(model, batch_size)   # '' when this step can run
    step = fused.FusedStep(model)
    logits = step(tok, cache, pos)           # tok [1] → logits [1, V]; k/v written at `pos`

Why: the eager step is ~60 aten ops a layer around its 7 matmuls (QK-norm, RoPE, the cache
write, attention over the whole preallocated cache under a mask, two post-norms with
their residuals, SwiGLU): ~1000 ops a token, each a dispatch, an allocation and often an
OpenMP fork. On the 1B with int4 weights they cost about as much as a third of the
token (benchmarks/RESULTS.md, "Fused decode glue"). Here each layer is its 7 linear
modules — called as modules, so every weight format, kernel choice and wrapper (int8/int4/
bf16 swaps, LoRA) is the same as in the model's forward — plus four calls into
olmo2/quant/native/decode.c, which reads each vector once and attends over the filled
positions only. `torch.compile` fuses the same glue but costs ~45 s per model; this costs
nothing at load.

What it is not: bit-exact. decode.c sums in another order and uses a polynomial exp, so
logits differ from the eager aten step in the last bits (tests bound it at ~1e-5 relative
and check greedy tokens); the model's forward (prefill, scoring, eval, training) is
untouched and stays the bit-exact path. `OLMO2_FUSED_DECODE=0` turns it off.

It reads the model's own modules each call (no copied weights, no stale pointers after a
`load_state_dict`), and refuses (`why_not`) whatever it does not reproduce: batches, padded
rows, non-fp32 activations, forward hooks (they would silently not run), other module types.
"""
from __future__ import annotations

import os

import torch

from olmo2.model import Olmo2, Olmo2Attention, Olmo2MLP, RMSNorm
from olmo2.quant import native


def why_not(model, batch_size: int) -> str:
    """'' when FusedStep can run this model's decode steps, else the reason it cannot."""
    if os.environ.get("OLMO2_FUSED_DECODE", "1").strip() == "0":
        return "off (OLMO2_FUSED_DECODE=0)"
    if batch_size != 1:
        return "batch > 1"
    if not isinstance(model, Olmo2):
        return f"not an olmo2 model ({type(model).__name__})"
    if not native.available():
        return f"no native library ({native.reason()})"
    cfg = model.config
    if cfg.head_dim % 16 or cfg.head_dim > 256 or cfg.n_heads % cfg.n_kv_heads or cfg.d_model % 8 or cfg.d_ff % 8:
        return "unsupported shape"
    inner = model.model
    if inner.norm.weight.dtype != torch.float32 or inner.norm.weight.device.type != "cpu":
        return "activations are not fp32 on the CPU"
    if inner.rotary.cos.dtype != torch.float32:
        return "RoPE tables are not fp32"
    for layer in inner.layers:
        if type(layer.self_attn) is not Olmo2Attention or type(layer.mlp) is not Olmo2MLP:
            return "replaced attention/MLP modules"
        norms = (layer.self_attn.q_norm, layer.self_attn.k_norm, layer.post_attention_layernorm,
                 layer.post_feedforward_layernorm)
        if any(type(n) is not RMSNorm for n in norms):
            return "replaced norm modules"
        if any(n.weight.dtype != torch.float32 or not n.weight.is_contiguous() for n in norms):
            return "norm weights are not dense fp32"
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return "the model has forward hooks"
    return ""


def _f32(t: torch.Tensor) -> torch.Tensor:
    """t as dense fp32 (what decode.c reads): a no-op for what the linears return."""
    return t if t.dtype is torch.float32 and t.is_contiguous() else t.to(torch.float32).contiguous()


class FusedStep:
    """One token through `model` for batch 1 against a `KVCache` (olmo2/infer/kvcache.py)."""

    def __init__(self, model: Olmo2):
        why = why_not(model, 1)
        if why:
            raise ValueError(f"fused decode step: {why}")
        self.model, self.lib = model, native._lib()
        cfg = model.config
        self.H, self.Hkv, self.D, self.d, self.ff = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model, cfg.d_ff
        self.eps = float(cfg.norm_eps)
        self.scale = float(model.model.layers[0].self_attn.scale)
        # the step's own activations, reused every token (no allocation but the linears')
        self.x = torch.empty(1, self.d)
        self.h = torch.empty(1, self.d)
        self.y = torch.empty(1, self.H * self.D)
        self.s = torch.empty(1, self.ff)

    @torch.inference_mode()
    def __call__(self, tok: torch.Tensor, cache, pos: int) -> torch.Tensor:
        """tok [1] at position `pos` (= the cache slot written) → logits [1, V]."""
        if not 0 <= pos < cache.max_len:
            raise ValueError(f"fused decode step: position {pos} outside the cache ({cache.max_len})")
        k0 = cache.k[0]
        if k0.dtype != torch.float32 or k0.shape[0] != 1 or not k0.is_contiguous():
            raise ValueError("fused decode step: needs a dense fp32 cache of batch 1")
        lib, inner = self.lib, self.model.model
        nt = torch.get_num_threads()
        H, Hkv, D, d, eps = self.H, self.Hkv, self.D, self.d, self.eps
        x, h, y, s = self.x, self.h, self.y, self.s
        x.copy_(inner.embed_tokens(tok[:, None]).reshape(1, d))
        cos, sin = inner.rotary.cos, inner.rotary.sin
        row = pos * D * 4  # byte offset of this position's row in the fp32 tables
        cos_p, sin_p = cos.data_ptr() + row, sin.data_ptr() + row
        for li, layer in enumerate(inner.layers):
            att, mlp = layer.self_attn, layer.mlp
            q, k, v = _f32(att.q_proj(x)), _f32(att.k_proj(x)), _f32(att.v_proj(x))
            kc, vc = cache.k[li], cache.v[li]
            rc = lib.olmo2_attn_step(nt, q.data_ptr(), k.data_ptr(), v.data_ptr(), att.q_norm.weight.data_ptr(),
                                     att.k_norm.weight.data_ptr(), eps, cos_p, sin_p, kc.data_ptr(), vc.data_ptr(),
                                     kc.shape[2], pos, H, Hkv, D, self.scale, y.data_ptr())
            if rc:
                raise MemoryError("fused decode step: out of memory")
            a = _f32(att.o_proj(y))
            lib.olmo2_add_rmsnorm(x.data_ptr(), a.data_ptr(), layer.post_attention_layernorm.weight.data_ptr(), eps, d,
                                  h.data_ptr())
            g, u = _f32(mlp.gate_proj(h)), _f32(mlp.up_proj(h))
            lib.olmo2_silu_mul(g.data_ptr(), u.data_ptr(), self.ff, s.data_ptr())
            dn = _f32(mlp.down_proj(s))
            lib.olmo2_add_rmsnorm(h.data_ptr(), dn.data_ptr(), layer.post_feedforward_layernorm.weight.data_ptr(), eps,
                                  d, x.data_ptr())
        lib.olmo2_rmsnorm(x.data_ptr(), inner.norm.weight.data_ptr(), eps, d, h.data_ptr())
        return self.model.lm_head(h)
