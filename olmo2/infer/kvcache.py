"""A preallocated key/value cache for incremental decoding.

    cache = KVCache.for_model(model, batch_size=1, max_len=prompt_len + max_new_tokens)
    logits = model(prompt, cache=cache, last_only=True)     # prefill: cache.length = T
    logits = model(next_tok[:, None], cache=cache)          # one step: cache.length = T+1

One `[B, n_kv_heads, max_len, head_dim]` buffer for keys and one for values per layer,
allocated once in the model's dtype. `update()` copies the new positions into the buffer
in place and returns views of the filled prefix, so a decode step never concatenates or
reallocates: its cost is the new token's projections plus attention over `length` keys.

The model duck-types the cache (see `olmo2/model.py`): it calls
`update(layer_idx, start, k, v)` with `start == cache.length` as it was when the forward
began, and sets `cache.length = start + T` when the forward ends.

Footguns:
- The returned views alias the buffers: they are only valid until the next `update()`
  that writes over the same positions (e.g. after `reset()`); never keep them around.
- `max_len` is a hard limit; writing past it raises (size the cache to prompt + new
  tokens, at most the model's `max_seq_len`).
- Rewinding is just `cache.length = n` (the positions after n are overwritten later).

Slot mode (`cache.slot = tensor([n])`, set by `olmo2.infer.decoder.Decoder` for its
one-token steps): `update()` then writes at the position held in that device tensor
(`index_copy_`) and returns the *whole* buffers, so a step's shapes never change and a
`torch.compile`d step needs neither recompiles nor dynamic shapes; the caller masks the
keys past the slot. The host int `start` is ignored in that mode.
"""
from __future__ import annotations

import torch
from torch import nn


#: A zeroed cache of at least this many bytes lives in huge pages (olmo2/infer/hugepages.py):
#: a decode step reads every filled position of every layer, 256 KiB a token for the fp32 1B,
#: so a long chat's cache is streamed like the weights. After a 1536-token prompt the int4 1B
#: decoded 1.20x faster per round (median of 6, range 0.98-1.30x; 64.0 vs 54.1 ms a token)
#: with its 0.38 GiB cache in huge pages (benchmarks/hugepages_ab.py --cache). Only zeroed caches
#: (the Decoder's): torch.zeros made them resident whole anyway, so 2 MiB pages cost no memory
#: (the arena's fresh pages read as zeros unwritten); smaller ones would each round up to one.
HUGE_CACHE_BYTES = 8 << 20


def _buffers(n: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, zeroed: bool) -> list:
    """`n` buffers of `shape`: torch's, or views of one huge-page arena (HUGE_CACHE_BYTES),
    whose fresh memory reads as zeros."""
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    if zeroed and device.type == "cpu" and n * nbytes >= HUGE_CACHE_BYTES:
        from olmo2.infer import hugepages
        if not hugepages.why_not():
            arena = hugepages.Arena(n * (nbytes + hugepages.ALIGN))
            return [arena.empty(shape, dtype) for _ in range(n)]
    alloc = torch.zeros if zeroed else torch.empty
    return [alloc(shape, dtype=dtype, device=device) for _ in range(n)]


class KVCache:
    """Per-layer preallocated K/V buffers; `update()` writes in place, returns prefix views."""

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", zeroed: bool = False):
        if max_len <= 0 or batch_size <= 0:
            raise ValueError(f"KVCache needs max_len > 0 and batch_size > 0 (got {max_len}, {batch_size})")
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        # torch.empty, not zeros, on the prefix path: every position is written before it is
        # read. Slot mode reads the whole buffer (masked), and a masked NaN from uninitialised
        # memory still poisons the output (softmax weight 0 × NaN in V = NaN): `zeroed=True`.
        self.zeroed = zeroed
        bufs = _buffers(2 * n_layers, shape, dtype, torch.device(device), zeroed)
        self.k, self.v = bufs[:n_layers], bufs[n_layers:]
        self.max_len = max_len
        self.batch_size = batch_size
        self.length = 0
        self.slot: torch.Tensor | None = None  # see "Slot mode" in the module docstring

    @classmethod
    def for_model(cls, model: nn.Module, batch_size: int, max_len: int, zeroed: bool = False) -> "KVCache":
        """A cache shaped for `model` (an `Olmo2`), in its parameters' dtype and device."""
        cfg = model.config
        p = model.lm_head.weight
        return cls(cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim, dtype=p.dtype, device=p.device,
                   zeroed=zeroed)

    def update(self, layer_idx: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, Hkv, T, D] at positions start..start+T; return K/V of 0..start+T."""
        if self.slot is not None:
            # In place at a device-held position: no host int enters the step, no slicing.
            for buf, new in ((self.k[layer_idx], k), (self.v[layer_idx], v)):
                buf.index_copy_(2, self.slot, new)
            return self.k[layer_idx], self.v[layer_idx]
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache overflow: positions up to {end} but max_len is {self.max_len}")
        kb, vb = self.k[layer_idx], self.v[layer_idx]
        kb[:, :, start:end] = k
        vb[:, :, start:end] = v
        return kb[:, :, :end], vb[:, :, :end]

    def grown(self, max_len: int) -> "KVCache":
        """A larger cache holding this one's first `length` positions (for a chat that
        outgrows its buffers; the old buffers are freed when dropped)."""
        k0 = self.k[0]
        new = KVCache(len(self.k), self.batch_size, k0.shape[1], max_len, k0.shape[3], k0.dtype, k0.device,
                      zeroed=self.zeroed)
        for dst, src in zip(new.k + new.v, self.k + self.v):
            dst[:, :, :self.length] = src[:, :, :self.length]
        new.length = self.length
        return new

    def reset(self) -> None:
        """Forget all positions (buffers are kept and overwritten)."""
        self.length = 0

    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
