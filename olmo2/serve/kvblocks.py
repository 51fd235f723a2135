"""A block (paged) KV cache: memory follows the tokens actually in flight.

    pool = BlockPool.for_model(model, n_blocks=256, block_size=16)
    table = pool.alloc(pool.blocks_for(prompt_len + 1))      # a request's block ids
    view = pool.bind(tables=[table], lens=[0], new=[prompt_len])
    logits = model(ids, positions=view.positions, cache=view, attn_mask=view.mask)

Every layer owns one `[n_blocks, n_kv_heads, block_size, head_dim]` buffer for keys and
one for values. A request holds a list of block ids (its block table) and grows it one
block at a time as it decodes, so a batch of short requests holds a few blocks, not
`batch × max_len` positions (OLMo 2 1B's full-MHA cache is 128 KiB/token in bf16, so a
padded `[max_batch, max_len]` slab would be most of the RAM of a small machine).

A forward binds a `BlockView`, which duck-types `olmo2.infer.kvcache.KVCache` for the
model: `update(layer, start, k, v)` scatters the new k/v rows into each request's blocks
(row b, token t goes to position `lens[b] + t`) and returns the gathered K/V
`[B, Hkv, n_tab * block_size, D]` of every row's blocks; `mask` (True = attend) keeps
key j of row b visible to its token t only when `j <= lens[b] + t`, so rows of different
lengths share one forward and each sees exactly its own causal prefix — which is why a
request's tokens do not depend on what else is in the batch (up to float summation order).

Prefix reuse: a full block is keyed by a hash chain over every token up to its end, so
two requests whose prompts start alike (a system prompt, the earlier turns of a chat) find
the same blocks with `match()` and prefill only the rest. Blocks are refcounted; when the
last user frees a keyed block it stays cached, evictable in LRU order by `alloc()`, so the
cache costs no capacity. Only full blocks strictly inside a request's known tokens are
keyed, and a request only writes positions after its matched prefix, so shared blocks are
never written.

Why gather instead of a paged-attention kernel: on CPU torch has no paged SDPA; one
`index_select` per layer per step copies the in-flight K/V (small next to the weights
for the models this serves on CPU) and keeps attention the stock
`F.scaled_dot_product_attention`.

`int8=True` stores K/V as int8 with one fp32 scale per (block, head, position): 4× less
memory than fp32, dequantised on gather. Values are symmetric-absmax quantised per
position vector, so the error is at most scale/2 per element.

Footguns: buffers start zeroed, not `torch.empty`: masked keys still enter the V matmul
with weight 0, and 0 × NaN garbage would be NaN. A BlockView is valid for one forward.
"""
from __future__ import annotations

import collections
import hashlib
import struct
from dataclasses import dataclass

import torch


class OutOfBlocks(Exception):
    """The pool has no free block; the scheduler waits for a request to finish."""


class BlockPool:
    """Per-layer K/V block buffers plus a free list; `alloc`/`free` hand out block ids."""

    def __init__(self, n_layers: int, n_blocks: int, block_size: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", int8: bool = False):
        if n_blocks < 1 or block_size < 1:
            raise ValueError(f"BlockPool needs n_blocks, block_size >= 1 (got {n_blocks}, {block_size})")
        self.n_blocks, self.block_size, self.dtype, self.int8 = n_blocks, block_size, dtype, int8
        shape = (n_blocks, n_kv_heads, block_size, head_dim)
        store = torch.int8 if int8 else dtype
        self.k = [torch.zeros(shape, dtype=store, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=store, device=device) for _ in range(n_layers)]
        if int8:
            sshape = (n_blocks, n_kv_heads, block_size, 1)
            self.ks = [torch.zeros(sshape, dtype=torch.float32, device=device) for _ in range(n_layers)]
            self.vs = [torch.zeros(sshape, dtype=torch.float32, device=device) for _ in range(n_layers)]
        self._free = list(range(n_blocks - 1, -1, -1))  # pop() hands out low ids first
        # Prefix cache (see the module docstring): refcounts, content keys, evictable blocks.
        self._ref = [0] * n_blocks
        self._key_of: dict[int, bytes] = {}
        self._by_key: dict[bytes, int] = {}
        self._lru: collections.OrderedDict[int, None] = collections.OrderedDict()

    @classmethod
    def for_model(cls, model, n_blocks: int, block_size: int = 16, int8: bool = False) -> "BlockPool":
        """A pool shaped for `model` (an `Olmo2`), in its parameters' dtype and device."""
        cfg, p = model.config, model.lm_head.weight
        return cls(cfg.n_layers, n_blocks, block_size, cfg.n_kv_heads, cfg.head_dim, p.dtype, p.device, int8)

    # ---- accounting ------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        """Blocks an alloc() can hand out: never used, or cached with no user (evictable)."""
        return len(self._free) + len(self._lru)

    @property
    def cached_blocks(self) -> int:
        return len(self._by_key)

    def blocks_for(self, n_tokens: int) -> int:
        """Blocks needed to hold n_tokens positions."""
        return -(-n_tokens // self.block_size)

    def alloc(self, n: int) -> list[int]:
        """n fresh block ids (evicting least recently used cached prefixes if needed);
        raises OutOfBlocks, allocating nothing, if fewer are available."""
        if n > self.free_blocks:
            raise OutOfBlocks(f"need {n} blocks, {self.free_blocks} free")
        out = []
        for _ in range(n):
            if self._free:
                b = self._free.pop()
            else:
                b, _ = self._lru.popitem(last=False)
                del self._by_key[self._key_of.pop(b)]
            self._ref[b] = 1
            out.append(b)
        return out

    def free(self, blocks: list[int]) -> None:
        """Drop one reference to each block; unreferenced blocks with a cached prefix stay
        (evictable), the others go back to the free list."""
        for b in reversed(blocks):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                if b in self._key_of:
                    self._lru[b] = None
                else:
                    self._free.append(b)

    # ---- prefix cache ----------------------------------------------------------------
    def _keys(self, tokens: list[int], n_blocks: int):
        """Content keys of the first n_blocks full blocks: a hash chain over the tokens, so
        a key names the block's tokens AND everything before them (their K/V depend on it)."""
        h = hashlib.blake2b(digest_size=16)
        bs = self.block_size
        for i in range(n_blocks):
            h.update(struct.pack(f"<{bs}q", *tokens[i * bs:(i + 1) * bs]))
            yield h.copy().digest()

    def match(self, tokens: list[int], max_blocks: int) -> list[int]:
        """Cached blocks holding the longest prefix of `tokens` (≤ max_blocks full blocks);
        the caller now holds a reference to each (release with free())."""
        out = []
        for key in self._keys(tokens, min(max_blocks, len(tokens) // self.block_size)):
            b = self._by_key.get(key)
            if b is None:
                break
            if self._ref[b] == 0:
                del self._lru[b]
            self._ref[b] += 1
            out.append(b)
        return out

    def register(self, blocks: list[int], tokens: list[int]) -> None:
        """Make the full blocks of `tokens` (held in `blocks`, in order) findable by match()."""
        n = min(len(blocks), len(tokens) // self.block_size)
        for b, key in zip(blocks[:n], self._keys(tokens, n)):
            if key not in self._by_key and b not in self._key_of:
                self._by_key[key] = b
                self._key_of[b] = key

    def nbytes(self) -> int:
        """Bytes held by the K/V buffers (all blocks, used or not)."""
        ts = self.k + self.v + (self.ks + self.vs if self.int8 else [])
        return sum(t.numel() * t.element_size() for t in ts)

    def bytes_per_token(self) -> int:
        return self.nbytes() // (self.n_blocks * self.block_size)

    # ---- one forward ---------------------------------------------------------------
    def bind(self, tables: list[list[int]], lens: list[int], new: list[int]) -> "BlockView":
        """A cache view for one forward: row b has lens[b] cached tokens and adds new[b] (≤ T).

        Rows with fewer new tokens than T are right-padded; their pad tokens write to a
        scratch position past their length that the mask never shows as a key.
        """
        B, T = len(tables), max(new)
        dev = self.k[0].device
        n_tab = max(len(t) for t in tables)
        tab = torch.zeros(B, n_tab, dtype=torch.long)
        for b, t in enumerate(tables):
            tab[b, :len(t)] = torch.tensor(t, dtype=torch.long)
        lens_t = torch.tensor(lens, dtype=torch.long)
        new_t = torch.tensor(new, dtype=torch.long)
        t_idx = torch.arange(T)[None, :]
        valid = t_idx < new_t[:, None]                                          # [B, T] real tokens
        # Pads (t >= new[b]) take the row's last real position: they write nothing (only
        # real tokens are scattered) and their outputs are discarded by the caller.
        pos = torch.where(valid, lens_t[:, None] + t_idx, (lens_t + new_t - 1)[:, None])
        if int((lens_t + new_t).max()) > n_tab * self.block_size:
            raise ValueError("BlockPool.bind: a row's block table is too short for its tokens")
        blk = tab.gather(1, pos // self.block_size)[valid]                     # [N] real tokens only
        off = (pos % self.block_size)[valid]
        keys = torch.arange(n_tab * self.block_size)
        mask = keys[None, None, :] <= pos[:, :, None]                           # [B, T, S]
        return BlockView(self, tab.to(dev), valid.to(dev), blk.to(dev), off.to(dev), pos.to(dev),
                         mask[:, None].to(dev))


def _quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 per last-dim vector: (int8 values, fp32 scales [..., 1])."""
    scale = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127.0
    return torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8), scale


@dataclass
class BlockView:
    """Duck-types KVCache for one forward over a BlockPool (see the module docstring)."""

    pool: BlockPool
    tables: torch.Tensor     # [B, n_tab] block ids (padded with 0; masked out)
    valid: torch.Tensor      # [B, T] True for real (not right-padding) new tokens
    blk: torch.Tensor        # [N] block id each real new token is written to
    off: torch.Tensor        # [N] offset inside that block
    positions: torch.Tensor  # [B, T] RoPE positions of the new tokens
    mask: torch.Tensor       # [B, 1, T, n_tab * block_size], True = attend
    length: int = 0          # the model sets this after the forward; unused here

    def update(self, layer_idx: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Scatter k, v [B, Hkv, T, D] into the blocks; return gathered K/V of every row."""
        p = self.pool
        blk, off = self.blk, self.off
        # [B, H, T, D] → [N, H, D], real tokens only (each lands in its own slot: no
        # duplicate indices, so the scatter is deterministic).
        kk = k.permute(0, 2, 1, 3)[self.valid]
        vv = v.permute(0, 2, 1, 3)[self.valid]
        if p.int8:
            kq, ksc = _quant(kk)
            vq, vsc = _quant(vv)
            p.k[layer_idx][blk, :, off] = kq
            p.v[layer_idx][blk, :, off] = vq
            p.ks[layer_idx][blk, :, off] = ksc
            p.vs[layer_idx][blk, :, off] = vsc
        else:
            p.k[layer_idx][blk, :, off] = kk.to(p.dtype)
            p.v[layer_idx][blk, :, off] = vv.to(p.dtype)
        return self._gather(layer_idx, k.dtype)

    def _gather(self, layer_idx: int, dtype: torch.dtype):
        p = self.pool
        B, n_tab = self.tables.shape
        flat = self.tables.reshape(-1)

        def one(buf, scales):
            x = buf.index_select(0, flat)                    # [B*n_tab, H, bs, D]
            if scales is not None:
                x = (x.float() * scales.index_select(0, flat)).to(dtype)
            H, bs, D = x.shape[1:]
            return x.view(B, n_tab, H, bs, D).permute(0, 2, 1, 3, 4).reshape(B, H, n_tab * bs, D)

        if p.int8:
            return one(p.k[layer_idx], p.ks[layer_idx]), one(p.v[layer_idx], p.vs[layer_idx])
        return one(p.k[layer_idx], None), one(p.v[layer_idx], None)
