"""The OLMo 2 architecture, and nothing else.

    input_ids ─ embed_tokens ─┬─ layer 0 … layer n-1 ─ norm ─ lm_head ─ logits
                              │
    one layer (post-sublayer "reordered" norm, no pre-norm on the sublayer inputs):
        h   = x + post_attention_layernorm(self_attn(x))
        out = h + post_feedforward_layernorm(mlp(h))

    self_attn:  q = q_norm(q_proj(x)), k = k_norm(k_proj(x)), v = v_proj(x)
                (QK-norm over the FULL projection width, before the head reshape and
                before RoPE), rotate-half RoPE in fp32, causal SDPA, o_proj.
    mlp:        down_proj(silu(gate_proj(x)) * up_proj(x))   (SwiGLU)

No biases anywhere, untied embeddings, no embedding or logit scaling.

Module and parameter names are exactly those of `transformers.Olmo2ForCausalLM`
(`model.layers.3.self_attn.q_proj.weight`, ...), so an HF state dict loads with no
renaming at all and our checkpoints load into transformers unchanged.

Numerics (what "bit-compatible" rests on):
- RMSNorm statistics are computed in fp32; the normalised activation is cast back to the
  input dtype and then multiplied by the weight, as the OLMo trainer does. transformers
  ≥ 4.57 multiplies first and casts after; the two are identical in fp32 and differ by one
  bf16 rounding otherwise. We follow the trainer because that is what the weights saw.
- RoPE angles are fp32 products `position * inv_freq` with `inv_freq` computed by the same
  expression as transformers; the rotation itself runs in fp32 and is cast back after.
  The tables are precomputed once for `max_seq_len` positions: indexing a table gives
  bit-identical values to recomputing per call, and decode steps then cost nothing here.
- Attention is `F.scaled_dot_product_attention` with scale 1/sqrt(head_dim).

The KV cache is duck-typed (see `olmo2/infer/kvcache.py`): the model only calls
`cache.update(layer_idx, start, k, v) -> (k_all, v_all)` and reads/advances `cache.length`;
a cache that also has `attend(...)` computes the attention itself (shared-prefix batches,
`olmo2/infer/prefix_cache.py`).
Devices, sharding, files and sampling live elsewhere.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from olmo2.config import ModelConfig
from olmo2.errors import TokenIdError

if TYPE_CHECKING:  # only for type hints; the model never imports the inference package
    from olmo2.infer.kvcache import KVCache


class RMSNorm(nn.Module):
    """RMSNorm with an affine weight, no bias; statistics in fp32 (see module docstring)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return h.to(dtype) * self.weight


class Rotary(nn.Module):
    """cos/sin tables for rotate-half RoPE over the full head dim, kept in fp32."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self._build(max_seq_len)

    def reset_tables(self) -> None:
        """Rebuild cos/sin on the device the buffers are on now (after `to_empty`, whose
        buffers are uninitialised memory). Computed on the CPU and copied, so every device
        holds the same fp32 values as the CPU tables the transformers parity rests on."""
        device = self.cos.device
        self._build(self.cos.shape[0])
        self.cos, self.sin = self.cos.to(device), self.sin.to(device)

    def _build(self, n: int) -> None:
        # Same expression as transformers' default RoPE init, so the fp32 values agree.
        # Always built on the CPU, even inside `with torch.device("meta")` (how checkpoints
        # are loaded): the tables are derived, not loaded, and meta-device cos/sin would
        # cost ~0.8 s of lazy imports for tensors that must be rebuilt anyway.
        cpu = torch.device("cpu")
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=cpu).float()
                                         / self.head_dim))
        freqs = torch.arange(n, dtype=torch.float32, device=cpu)[:, None] * inv_freq[None, :]  # [n, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [n, D]
        # Non-persistent: derived state, never saved in checkpoints.
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] (or [T]) → fp32 cos, sin [B, 1, T, D]."""
        if self.cos.dtype != torch.float32:
            # `model.to(bfloat16)` casts float buffers too; the tables must stay fp32.
            self._build(self.cos.shape[0])
            self.cos, self.sin = self.cos.to(positions.device), self.sin.to(positions.device)
        if positions.dim() == 1:
            positions = positions[None]
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D] rotated by the fp32 angles in cos/sin [B, 1, T, D]; the rotation runs
    in fp32 (type promotion) and the result is cast back to x's dtype."""
    return ((x * cos) + (_rotate_half(x) * sin)).to(x.dtype)


class Olmo2Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q_width, kv_width = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, q_width, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, kv_width, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, kv_width, bias=False)
        self.o_proj = nn.Linear(q_width, cfg.d_model, bias=False)
        # QK-norm over the whole projection (all heads at once), not per head.
        self.q_norm = RMSNorm(q_width, cfg.norm_eps)
        self.k_norm = RMSNorm(kv_width, cfg.norm_eps)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    def forward(self, x, cos, sin, cache: "KVCache | None" = None, start: int = 0,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x))
        k = self.k_norm(self.k_proj(x))
        v = self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)      # [B, H, T, D]
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)   # [B, Hkv, T, D]
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None and hasattr(cache, "attend"):
            # A cache that computes attention itself (olmo2/infer/prefix_cache.py: keys shared
            # by every row are read once per batch instead of once per row).
            y = cache.attend(self.layer_idx, start, q, k, v, attn_mask, self.scale)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        if cache is not None:
            # Keys/values of all earlier positions plus these: [B, Hkv, start+T, D].
            k, v = cache.update(self.layer_idx, start, k, v)
        # With no mask: plain causal attention over these T tokens, or — one new token
        # after cached keys — attend to everything. Olmo2Model.forward builds the mask for
        # the only other case (a chunk after cached keys) once for all layers.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and T > 1,
                                           scale=self.scale, enable_gqa=self.n_kv_heads != self.n_heads)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o_proj(y)


class Olmo2MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Olmo2DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Olmo2Attention(cfg, layer_idx)
        self.mlp = Olmo2MLP(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, x, cos, sin, cache=None, start: int = 0, attn_mask=None):
        h = x + self.post_attention_layernorm(self.self_attn(x, cos, sin, cache, start, attn_mask))
        return h + self.post_feedforward_layernorm(self.mlp(h))


class Olmo2Model(nn.Module):
    """Embeddings, blocks and final norm (HF's `model.` prefix)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # `_weight` skips nn.Embedding's own normal_() init, which on the meta device (how
        # checkpoints are loaded) costs ~1 s of lazy imports; off meta we run the same
        # default init, so `Olmo2(cfg)` is unchanged. `reset_parameters` applies OLMo's init.
        weight = torch.empty(cfg.vocab_size, cfg.d_model)
        if not weight.is_meta:
            nn.init.normal_(weight)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, _weight=weight)
        self.layers = nn.ModuleList(Olmo2DecoderLayer(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)

    def forward(self, input_ids, positions=None, cache=None, attn_mask=None):
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + T, device=input_ids.device)
        if attn_mask is None and start > 0 and T > 1:
            # A chunk after cached keys: row t may see keys 0..start+t (causal, shifted).
            attn_mask = torch.ones(T, start + T, dtype=torch.bool, device=input_ids.device).tril(diagonal=start)
        h = self.embed_tokens(input_ids)
        cos, sin = self.rotary(positions)
        for layer in self.layers:
            h = layer(h, cos, sin, cache, start, attn_mask)
        if cache is not None:
            cache.length = start + T
        return self.norm(h)


def _check_input_ids(input_ids: torch.Tensor, cfg: ModelConfig, start: int, default_positions: bool) -> None:
    """Refuse ids the embedding would silently truncate (floats) or fail on with a bare
    IndexError (out of vocabulary, past the RoPE table). The value check reads the ids
    back, so it only runs on the CPU (free there; a host sync per step on a GPU)."""
    if input_ids.dtype.is_floating_point or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TokenIdError(f"input_ids must be an integer tensor (got {input_ids.dtype}); pass token ids as torch.long")
    if input_ids.dim() != 2:
        raise TokenIdError(f"input_ids must be [batch, tokens] (got shape {tuple(input_ids.shape)})")
    if default_positions and start + input_ids.shape[1] > cfg.max_seq_len:
        raise TokenIdError(f"input is {start + input_ids.shape[1]} positions but the model's context "
                           f"(max_seq_len) is {cfg.max_seq_len}; shorten the input")
    if input_ids.device.type == "cpu" and input_ids.numel() and not torch.compiler.is_compiling():
        lo, hi = (int(x) for x in torch.aminmax(input_ids))
        if lo < 0 or hi >= cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise TokenIdError(f"input_ids: token id {bad} is outside the model's vocabulary [0, {cfg.vocab_size}); "
                               "use the tokenizer the model was trained with")


class Olmo2(nn.Module):
    """OLMo 2 causal LM: `model(input_ids) -> logits [B, T, vocab]`.

    `positions` ([B, T] or [T]) and a boolean `attn_mask` ([B, 1, T, S], True = attend)
    are only needed for left-padded batches or intra-document masking; `cache` enables
    incremental decoding.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Olmo2Model(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                cache: "KVCache | None" = None, attn_mask: torch.Tensor | None = None,
                last_only: bool = False, head: bool = True) -> torch.Tensor:
        """Logits [B, T, vocab] ([B, 1, vocab] with last_only); head=False returns the final
        normed hidden states [B, T, d_model] instead, for a loss that applies `lm_head`
        itself (olmo2/train/loss.py: chunked, so the [B·T, vocab] logits never exist)."""
        _check_input_ids(input_ids, self.config, cache.length if cache is not None else 0, positions is None)
        h = self.model(input_ids, positions, cache, attn_mask)
        if not head:
            return h
        if last_only:  # prefill only needs the next-token logits: skip T-1 lm_head rows
            h = h[:, -1:]
        return self.lm_head(h)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """OLMo 2 init: every Linear/Embedding ~ N(0, std) truncated at ±3σ; norms = 1.

        Draws from `generator` module by module in `self.modules()` order; the sharded
        init (olmo2/train/init.py) replays exactly this order to get the same weights."""
        for m in self.modules():
            if self.has_init(m):
                self.init_weight_(m, m.weight, generator)
        self.model.rotary.reset_tables()

    @staticmethod
    def has_init(module: nn.Module) -> bool:
        """Whether `reset_parameters` initialises this module's `weight`."""
        return isinstance(module, (nn.Linear, nn.Embedding, RMSNorm))

    def init_weight_(self, module: nn.Module, out: torch.Tensor, generator: torch.Generator | None) -> None:
        """Write the OLMo 2 init of `module.weight` into `out` (a tensor of that shape)."""
        if isinstance(module, RMSNorm):
            out.fill_(1.0)
        else:
            std = self.config.init_std
            nn.init.trunc_normal_(out, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=generator)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- conveniences that delegate to the I/O and inference packages ---------------
    @classmethod
    def from_pretrained(cls, path_or_id: str, dtype: torch.dtype | str = torch.float32,
                        device: str | torch.device = "cpu", **kw) -> "Olmo2":
        """Load an HF-format directory (or hub id when online); see olmo2.checkpoint."""
        from olmo2.checkpoint import load_model
        return load_model(path_or_id, dtype=dtype, device=device, **kw)

    def save_pretrained(self, out_dir, tokenizer=None, dtype: torch.dtype | None = None) -> None:
        from olmo2.checkpoint import save_model
        save_model(self, out_dir, tokenizer=tokenizer, dtype=dtype)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32, **kw) -> torch.Tensor:
        """Token ids [B, prompt+new], as `transformers.generate` returns them."""
        from olmo2.infer.generate import generate
        return generate(self, input_ids, max_new_tokens=max_new_tokens, **kw)
