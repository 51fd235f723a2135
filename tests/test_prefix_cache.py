"""PrefixCache.attend (shared keys read once per batch) against SDPA over the concatenated keys.

The reference is torch's own `scaled_dot_product_attention` on keys built the plain way
(prefix expanded to every row, per-row segments gathered, tail appended), with the same
boolean mask; then a whole model run through the cache against a plain full forward.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from olmo2.config import ModelConfig
from olmo2.infer import prefix_cache
from olmo2.infer.prefix_cache import PrefixCache
from olmo2.model import Olmo2


def _segments(gen, n_layers, Hkv, D, P, R, n_ctx, G, dtype):
    shared = ([torch.randn(1, Hkv, P, D, generator=gen, dtype=dtype) for _ in range(n_layers)],
              [torch.randn(1, Hkv, P, D, generator=gen, dtype=dtype) for _ in range(n_layers)], None)
    rows = torch.randint(0, n_ctx, (G,), generator=gen)
    per_row = ([torch.randn(n_ctx, Hkv, R, D, generator=gen, dtype=dtype) for _ in range(n_layers)],
               [torch.randn(n_ctx, Hkv, R, D, generator=gen, dtype=dtype) for _ in range(n_layers)], rows)
    return [shared, per_row]


@pytest.mark.parametrize("H,Hkv", [(4, 4), (8, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("T", [1, 5, 20])  # 20: past CASCADE_MAX_T, the SDPA path
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("blocked", [False, True])
def test_attend_equals_sdpa_over_concatenated_keys(H, Hkv, T, dtype, tol, blocked, monkeypatch):
    if blocked:  # force the row-blocked path (large batches)
        monkeypatch.setattr(prefix_cache, "SCORE_ELEMENTS", 1)
    gen = torch.Generator().manual_seed(0)
    G, D, P, R, L = 6, 16, 37, 9, 2
    segs = _segments(gen, L, Hkv, D, P, R, 3, G, dtype)
    cache = PrefixCache(segs, G, T + 3, segs[0][0][0], L)
    ref = PrefixCache(segs, G, T + 3, segs[0][0][0], L)
    q = torch.randn(G, H, T, D, generator=gen, dtype=dtype)
    k = torch.randn(G, Hkv, T, D, generator=gen, dtype=dtype)
    v = torch.randn(G, Hkv, T, D, generator=gen, dtype=dtype)
    start = P + R
    mask = torch.rand(G, 1, T, P + R + T, generator=gen) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    got = cache.attend(1, start, q, k, v, mask if T > 1 else mask, 0.25)
    kk, vv = ref.update(1, start, k, v)
    want = F.scaled_dot_product_attention(q.float(), kk.float(), vv.float(), attn_mask=mask, scale=0.25,
                                          enable_gqa=H != Hkv)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    if T == 1:  # one token with no mask sees every key
        got = cache.attend(1, start, q, k, v, None, 0.25)
        want = F.scaled_dot_product_attention(q.float(), kk.float(), vv.float(), scale=0.25, enable_gqa=H != Hkv)
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


def test_a_chunk_without_mask_is_refused_and_segment_order_checked():
    gen = torch.Generator().manual_seed(1)
    segs = _segments(gen, 1, 2, 8, 4, 3, 2, 2, torch.float32)
    cache = PrefixCache(segs, 2, 4, segs[0][0][0], 1)
    q = torch.randn(2, 2, 3, 8)
    with pytest.raises(ValueError, match="explicit mask"):
        cache.attend(0, 7, q, q, q, None, 1.0)
    with pytest.raises(ValueError, match="shared segments must precede"):
        PrefixCache(segs[::-1], 2, 4, segs[0][0][0], 1)


def test_model_through_prefix_cache_matches_full_forward():
    """Prefix once (batch 1), then 3 rows' suffixes and two decode steps through PrefixCache:
    each row's logits equal a plain forward of prefix + that row's tokens."""
    from olmo2.infer.kvcache import KVCache
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)
    model = Olmo2(cfg).eval()
    model.reset_parameters(generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(2)
    prefix = torch.randint(0, 97, (1, 11), generator=gen)
    rows = torch.randint(0, 97, (3, 6), generator=gen)
    with torch.inference_mode():
        pc = KVCache.for_model(model, 1, 11)
        model.model(prefix, cache=pc)
        like = pc.k[0]
        cache = PrefixCache([(pc.k, pc.v, None)], 3, 6, like, cfg.n_layers)
        mask = torch.ones(3, 4, 11 + 4, dtype=torch.bool)
        mask[:, :, 11:] = torch.ones(4, 4, dtype=torch.bool).tril()
        pos = (11 + torch.arange(4))[None].expand(3, 4)
        got = [model(rows[:, :4], positions=pos, cache=cache, attn_mask=mask[:, None])]
        for t in (4, 5):  # one-token steps, no mask
            got.append(model(rows[:, t:t + 1], positions=torch.full((3, 1), 11 + t), cache=cache))
        got = torch.cat(got, 1)
        want = model(torch.cat([prefix.expand(3, -1), rows], 1))[:, 11:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
