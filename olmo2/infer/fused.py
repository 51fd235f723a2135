"""The batch-1 decode step with its glue in native code: the `Decoder`'s eager step for one
unpadded row (`olmo2 generate`, `olmo2 chat`, RLVR rollouts of one prompt), when the model
computes in fp32. (`olmo2 serve` batches requests in its own engine, olmo2/serve/engine.py.)

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


def _runner(mod, inp: torch.Tensor, out: torch.Tensor):
    """A call with no arguments that computes out = mod(inp) and returns 0: the module's
    native kernel bound once (`native.bind`) where it has one for one row, else the module
    itself (any other format, kernel or wrapper) with its result copied into `out`."""
    binding = getattr(mod, "decode_binding", None)
    binding = binding() if binding is not None else None
    if binding is not None:
        entry, weights = binding
        return native.bind(entry, inp, out, weights), weights

    def call():
        out.copy_(mod(inp).reshape(out.shape))
        return 0
    return call, ()


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
        # the step's activations, reused every token: every linear reads and writes fixed buffers
        e = lambda n: torch.empty(1, n)  # noqa: E731
        self.x, self.h, self.a, self.dn, self.hf = e(self.d), e(self.d), e(self.d), e(self.d), e(self.d)
        self.q, self.y = e(self.H * self.D), e(self.H * self.D)
        self.k, self.v = e(self.Hkv * self.D), e(self.Hkv * self.D)
        self.g, self.u, self.s = e(self.ff), e(self.ff), e(self.ff)
        self._ptr = {n: getattr(self, n).data_ptr() for n in ("x", "h", "a", "dn", "y", "q", "k", "v", "g", "u", "s", "hf")}
        self.rebind()

    def rebind(self) -> None:
        """Bind every linear to the step's buffers (again): at each prompt (the Decoder calls
        this from start()), so weights swapped or reloaded between generations are the ones
        used, and whenever the thread count changed."""
        self._threads = torch.get_num_threads()
        self._keep = []  # the bound weights: alive as long as their pointers are in use
        plan = []
        for layer in self.model.model.layers:
            att, mlp = layer.self_attn, layer.mlp
            runs = []
            for mod, i, o in ((att.q_proj, self.x, self.q), (att.k_proj, self.x, self.k), (att.v_proj, self.x, self.v),
                              (att.o_proj, self.y, self.a), (mlp.gate_proj, self.h, self.g),
                              (mlp.up_proj, self.h, self.u), (mlp.down_proj, self.s, self.dn)):
                fn, held = _runner(mod, i, o)
                runs.append(fn)
                self._keep.append(held)
            plan.append((layer, *runs))
        self._plan = plan

    @torch.inference_mode()
    def __call__(self, tok: torch.Tensor, cache, pos: int) -> torch.Tensor:
        """tok [1] at position `pos` (= the cache slot written) → logits [1, V]."""
        if not 0 <= pos < cache.max_len:
            raise ValueError(f"fused decode step: position {pos} outside the cache ({cache.max_len})")
        k0 = cache.k[0]
        if k0.dtype != torch.float32 or k0.shape[0] != 1 or not k0.is_contiguous():
            raise ValueError("fused decode step: needs a dense fp32 cache of batch 1")
        nt = torch.get_num_threads()
        if nt != self._threads:
            self.rebind()
        lib, inner = self.lib, self.model.model
        H, Hkv, D, d, eps = self.H, self.Hkv, self.D, self.d, self.eps
        P = self._ptr
        x, h, a, dn, y, q, k, v, g, u, s = (P[n] for n in ("x", "h", "a", "dn", "y", "q", "k", "v", "g", "u", "s"))
        self.x.copy_(inner.embed_tokens(tok[:, None]).reshape(1, d))
        row = pos * D * 4  # byte offset of this position's row in the fp32 RoPE tables
        cos_p, sin_p = inner.rotary.cos.data_ptr() + row, inner.rotary.sin.data_ptr() + row
        for li, (layer, q_mm, k_mm, v_mm, o_mm, gate_mm, up_mm, down_mm) in enumerate(self._plan):
            att = layer.self_attn
            kc, vc = cache.k[li], cache.v[li]
            if (q_mm() or k_mm() or v_mm()
                    or lib.olmo2_attn_step(nt, q, k, v, att.q_norm.weight.data_ptr(), att.k_norm.weight.data_ptr(),
                                           eps, cos_p, sin_p, kc.data_ptr(), vc.data_ptr(), kc.shape[2], pos, H,
                                           Hkv, D, self.scale, y)
                    or o_mm()):
                raise RuntimeError("fused decode step: a native call failed (out of memory?)")
            lib.olmo2_add_rmsnorm(x, a, layer.post_attention_layernorm.weight.data_ptr(), eps, d, h)
            if gate_mm() or up_mm():
                raise RuntimeError("fused decode step: a native call failed (out of memory?)")
            lib.olmo2_silu_mul(g, u, self.ff, s)
            if down_mm():
                raise RuntimeError("fused decode step: a native call failed (out of memory?)")
            lib.olmo2_add_rmsnorm(h, dn, layer.post_feedforward_layernorm.weight.data_ptr(), eps, d, x)
        lib.olmo2_rmsnorm(x, inner.norm.weight.data_ptr(), eps, d, P["hf"])
        return self.model.lm_head(self.hf)
