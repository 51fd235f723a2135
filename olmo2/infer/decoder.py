"""The decode engine behind generate/chat: chunked prefill, a fixed-shape one-token step,
optional `torch.compile` of that step, and reuse of the cached prefix across calls.

    dec = Decoder(model, batch_size=1, capacity=T + max_new, compile=False)
    logits = dec.start(ids)              # prefill (reusing whatever prefix is cached)
    while ...:
        tok = sample_next(logits, ...)
        logits = dec.step(tok)           # [B, V]; no host sync, no new buffers

Why a step of fixed shape: the step attends over the *whole* preallocated cache
(`capacity` keys) with a mask `key_index <= slot`, where `slot` is a one-element device
tensor advanced in place. Nothing in the step depends on a host integer, so (a) it never
reads a value back from the device, and (b) a compiled step is one static graph, traced
once (no `dynamic=True`, no recompiles per cache length). The price is attention over
the empty positions too: for OLMo 2 1B each position holds 256 KiB of fp32 K/V (128 KiB in
bf16), so a step over 256 positions reads ~64 MiB next to 5.1 GB of fp32 weights (~1 %).
That is why the cache is sized to what the call needs, not to the model's context, and
grows in `GROW`-position blocks for a chat.

Batch 1 without padding (generate, chat) takes the fused step instead (olmo2/infer/fused.py:
the glue between the matmuls in native code, attention over the filled positions only);
the fixed-shape step serves batches, padded rows and `compile=True`.

Prefill runs in chunks of `prefill_chunk` tokens through the ordinary prefix path of the
cache (host-int positions, attention over the filled prefix only): activations stay
`chunk × d_ff` instead of `prompt × d_ff`, and only the last chunk runs the lm_head.

Prefix reuse (`start()`, batch 1, no padding): the decoder remembers the ids whose K/V
it holds (prompt + every token fed back by `step`); a new prompt that begins with them —
the next turn of a chat — prefills only what follows. Where they differ (history trimmed
to fit the context, an edited turn, a reply that re-tokenizes differently) the cache is
rewound to the common prefix and rebuilt from there, so the result always equals a fresh
prefill of the whole prompt.

Compiling (`compile=True`): Inductor with `freezing` (weights become constants, so
mkldnn can pre-pack bf16/int8 weights) and with its FX graph cache off — with freezing on,
a cache hit can serve the *previous* model's pre-packed weights to a same-shaped model
(wrong logits, no error; docs/cpu-kernels.md pitfall 4). The first step pays the compile
(tens of seconds for the 1B); whether it pays back is measured in benchmarks/cpu_decode.py.
"""
from __future__ import annotations

import types
import weakref

import torch

from olmo2.infer import fused
from olmo2.infer.heap import keep_freed_memory
from olmo2.infer.kvcache import KVCache

GROW = 256  # a chat's cache grows in blocks of this many positions (bounded step-mask waste)
PREFILL_CHUNK = 512


def _step(model, tok: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor, key_index: torch.Tensor,
          key_valid: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One token per row through the model against the whole cache: logits [B, V].

    tok [B], pos [B, 1] (RoPE positions), slot [1] (cache column written), key_index [S],
    key_valid [B, S] (False for left-padding columns). Kept free of host ints (compiled)."""
    mask = (key_index <= slot) & key_valid              # [B, S]: written keys up to this token
    return model(tok[:, None], positions=pos, cache=cache, attn_mask=mask[:, None, None, :])[:, -1]


class _SlotView:
    """The cache as the one-token step sees it: writes go to the real cache's slot
    (`KVCache` slot mode ignores the host position), and `length` reads 0 every step.
    The model reads `cache.length` and sets it to `length + 1`; on the real cache that
    host int changes every step, and torch.compile guards on it, so a compiled step
    recompiled at every position until Dynamo's recompile limit sent it back to eager.
    The Decoder advances the real length itself."""

    def __init__(self, cache: KVCache):
        self.cache = cache
        self.length = 0

    def update(self, layer_idx: int, start: int, k: torch.Tensor, v: torch.Tensor):
        return self.cache.update(layer_idx, start, k, v)


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _decodes_int8_on_aten(model) -> bool:
    """Whether some int8 linear of `model` decodes on aten's int8 kernel (olmo2/quant/kernels.py)."""
    from olmo2.quant.kernels import choose
    from olmo2.quant.linear import Int8Linear
    return any(isinstance(m, Int8Linear) and choose("int8", "decode", m.native_fits()) == "aten"
               for m in model.modules())


def compiled_step(model):
    """`_step` compiled for this model (Inductor, freezing on, FX graph cache off).

    One compiled function per model, each over its own copy of `_step`'s code object:
    Dynamo keeps its compiled graphs on the code object, and with freezing a graph holds
    the weights it was traced with as constants, so a second model of the same shapes
    must never reach the first one's graph."""
    fn = _COMPILED.get(model)
    if fn is None:
        for m in model.modules():  # bf16 linears: the graph needs their plain weights (quant/linear.py)
            if hasattr(m, "keep_plain"):
                m.keep_plain()
        own = types.FunctionType(_step.__code__.replace(), _step.__globals__, f"_step_{id(model):x}")
        opts = {"freezing": True, "fx_graph_cache": False}
        if _decodes_int8_on_aten(model):
            # int8 weights: max-autotune lets Inductor pick its C++ weight-only int8 micro-GEMM
            # for the aten int8 matmul; measured 1.37x the eager step on the 1B (357 vs 491 ms
            # per token, 1 thread). For bf16 and int4 the compiled step was slower than eager
            # (414 vs 304 and 211 vs 136 ms), so they get no autotuning (and gain nothing).
            # Linears on olmo2's native kernel are opaque custom ops to Inductor: autotuning
            # them would only cost compile time.
            opts["max_autotune"] = True
        fn = torch.compile(own, dynamic=False, options=opts)
        _COMPILED[model] = fn
    return fn


class Decoder:
    """A KV cache for `batch_size` rows plus the buffers of a fixed-shape decode step."""

    def __init__(self, model, batch_size: int, capacity: int, compile: bool = False,
                 prefill_chunk: int = PREFILL_CHUNK):
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1 (got {prefill_chunk})")
        self.model, self.B, self.chunk = model, batch_size, prefill_chunk
        self.device = model.lm_head.weight.device
        if self.device.type == "cpu":  # activations are malloc'd per op: stop glibc unmapping them (heap.py)
            keep_freed_memory()
        self._fn = compiled_step(model) if compile else _step
        # batch 1, eager: the glue between the matmuls in native code (olmo2/infer/fused.py);
        # `fused_off` says why not otherwise. Left-padded prompts take the aten step.
        self.fused_off = "compiled step" if compile else fused.why_not(model, batch_size)
        self._fused = None if self.fused_off else fused.FusedStep(model)
        self._padded = False
        # zeroed: the step reads every position (masked); see KVCache. 0: grow on first start().
        self.cache = KVCache.for_model(model, batch_size, max(1, capacity), zeroed=True)
        self._slot = torch.zeros(1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self._alloc_masks(self.capacity)
        self._held: list[int] = []          # ids whose K/V the cache holds (batch 1 only)
        self._fed: list[torch.Tensor] = []  # tokens stepped since, read back lazily (no sync per step)
        self.reused = 0                     # prompt tokens the last start() did not recompute

    @property
    def capacity(self) -> int:
        return self.cache.max_len

    def _alloc_masks(self, capacity: int) -> None:
        self._key_index = torch.arange(capacity, device=self.device)
        self._key_valid = torch.ones(self.B, capacity, dtype=torch.bool, device=self.device)

    def _ensure_capacity(self, need: int) -> None:
        if need <= self.capacity:
            return
        ctx = self.model.config.max_seq_len
        new = min(max(ctx, need), -(-need // GROW) * GROW)
        self.cache = self.cache.grown(new)
        self._alloc_masks(new)

    def reset(self) -> None:
        """Forget everything cached (`/reset` in a chat); buffers are kept."""
        self.cache.length = 0
        self._held, self._fed = [], []

    def held_ids(self) -> list[int]:
        """The ids whose keys/values the cache holds (batch 1), reading back stepped tokens."""
        if self._fed:
            self._held += torch.stack(self._fed).reshape(-1).tolist()
            self._fed = []
        return self._held

    # ---- prefill ---------------------------------------------------------------------
    def start(self, ids: torch.Tensor, mask: torch.Tensor | None = None, max_new_tokens: int = 0) -> torch.Tensor:
        """Prefill ids [B, T] (left-padded rows: `mask` [B, T]) → next-token logits [B, V].

        For one unpadded row, keeps the cached prefix it shares with `ids` (see module
        docstring); otherwise starts from an empty cache."""
        B, T = ids.shape
        common = 0
        if B == 1 and mask is None:
            held = self.held_ids()
            new = ids[0].tolist()
            limit = min(len(held), T - 1)  # at least one token must run to produce logits
            while common < limit and held[common] == new[common]:
                common += 1
            self._held = new
        else:
            self._held = []
        self._fed = []
        self.reused = common
        if self._fused is not None:  # the model as it is now: hooks added since, weights reloaded
            self.fused_off = fused.why_not(self.model, self.B)
            if self.fused_off:
                self._fused = None
            else:
                self._fused.rebind()
        self._ensure_capacity(T + max_new_tokens)
        self.cache.length = common
        self._key_valid.fill_(True)
        self._padded = mask is not None
        if mask is None:
            logits = self._prefill(ids[:, common:], None, None)
            self._pos.fill_(T)
        else:
            self._key_valid[:, :T] = mask
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
            # Pads see only themselves (keeps their unused activations finite: an all-masked
            # SDPA row is NaN, and NaN in V would poison real rows).
            causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
            eye = torch.eye(T, dtype=torch.bool, device=ids.device)
            logits = self._prefill(ids, pos, (causal[None] & mask[:, None, :]) | eye[None])
            self._pos.copy_(pos[:, -1:] + 1)
        self._slot.fill_(T)
        return logits

    def _prefill(self, ids: torch.Tensor, pos: torch.Tensor | None, full_mask: torch.Tensor | None) -> torch.Tensor:
        """Run ids through the cache's prefix path in chunks; logits of the last position."""
        self.cache.slot = None
        T = ids.shape[1]
        logits = None
        for a in range(0, T, self.chunk):
            b = min(T, a + self.chunk)
            kw = {}
            if full_mask is not None:  # padded rows: this chunk's rows against keys 0..b
                kw = dict(positions=pos[:, a:b], attn_mask=full_mask[:, None, a:b, :b])
            if b < T:  # an inner chunk only fills the cache: skip the lm_head entirely
                self.model(ids[:, a:b], cache=self.cache, head=False, **kw)
            else:
                logits = self.model(ids[:, a:b], cache=self.cache, last_only=True, **kw)
        return logits[:, -1]

    # ---- one token -------------------------------------------------------------------
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Feed tok [B] (at the next position of every row) → next-token logits [B, V]."""
        if self.cache.length >= self.capacity:
            raise ValueError(f"Decoder: cache full ({self.capacity} positions)")
        if self._fused is not None and not self._padded:
            # unpadded batch 1: the position is the cache length, a host int
            logits = self._fused(tok, self.cache, self.cache.length)
        else:
            self.cache.slot = self._slot
            view = _SlotView(self.cache)
            logits = self._fn(self.model, tok, self._pos, self._slot, self._key_index, self._key_valid, view)
            self.cache.slot = None
        self.cache.length += 1  # the host count; the device positions follow in place
        self._slot.add_(1)
        self._pos.add_(1)
        if self.B == 1:
            self._fed.append(tok)
        return logits
