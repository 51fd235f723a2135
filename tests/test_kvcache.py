"""KVCache: in-place preallocated updates, and cached decoding == the uncached forward.

For MHA and GQA tiny models, 64+ greedy steps through the cache must give the same
tokens as re-running the whole sequence, and each step's logits must be within 1e-5 of
the full forward's last-position logits.
"""
from __future__ import annotations

import pytest
import torch

from olmo2.config import ModelConfig
from olmo2.infer.generate import decode_one
from olmo2.infer.kvcache import KVCache
from olmo2.model import Olmo2

CONFIGS = {
    "mha": ModelConfig(vocab_size=211, d_model=48, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=96, max_seq_len=256),
    "gqa": ModelConfig(vocab_size=197, d_model=64, n_layers=3, n_heads=8, n_kv_heads=2, d_ff=80, max_seq_len=256),
}


def tiny(kind: str) -> Olmo2:
    torch.manual_seed(0)
    m = Olmo2(CONFIGS[kind].replace(init_std=0.08)).eval()
    m.reset_parameters()
    return m


def test_update_is_in_place_and_returns_prefix_views():
    c = KVCache(n_layers=2, batch_size=2, n_kv_heads=3, max_len=10, head_dim=4)
    ptr = c.k[1].data_ptr()
    k, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ka, va = c.update(1, 0, k, v)
    assert ka.shape == (2, 3, 4, 4) and torch.equal(ka, k) and torch.equal(va, v)
    assert ka.data_ptr() == ptr  # a view of the buffer, no copy
    k2, v2 = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
    ka, va = c.update(1, 4, k2, v2)
    assert ka.shape == (2, 3, 5, 4) and torch.equal(ka[:, :, 4:], k2) and torch.equal(ka[:, :, :4], k)
    assert c.k[1].data_ptr() == ptr  # never reallocated
    with pytest.raises(ValueError, match="overflow"):
        c.update(0, 8, torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4))
    c.length = 5
    c.reset()
    assert c.length == 0


def test_for_model_shapes_and_dtype():
    m = tiny("gqa").to(torch.bfloat16)
    c = KVCache.for_model(m, batch_size=3, max_len=17)
    assert len(c.k) == 3 and c.k[0].shape == (3, 2, 17, 8) and c.k[0].dtype == torch.bfloat16
    assert c.nbytes() == 2 * 3 * (3 * 2 * 17 * 8) * 2


@pytest.mark.parametrize("kind", ["mha", "gqa"])
@torch.inference_mode()
def test_cached_decode_equals_full_forward(kind):
    m = tiny(kind)
    V = m.config.vocab_size
    seq = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    steps = 70
    T0 = seq.shape[1]
    cache = KVCache.for_model(m, 2, T0 + steps)
    step_logits = [m(seq, cache=cache, last_only=True)[:, -1]]
    for _ in range(steps):
        tok = step_logits[-1].argmax(-1)
        seq = torch.cat([seq, tok[:, None]], dim=1)
        step_logits.append(decode_one(m, tok, cache))
    assert cache.length == seq.shape[1]
    # One uncached forward over the final sequence: by causality its position t holds the
    # next-token logits given tokens 0..t, i.e. what cached step t - T0 + 1 computed.
    ref = m(seq)[:, T0 - 1:]
    got = torch.stack(step_logits, 1)
    err = (got - ref).abs().max().item()
    assert err <= 1e-5, f"max |Δ| = {err:.3g}"
    assert torch.equal(ref[:, :-1].argmax(-1), seq[:, T0:])  # greedy tokens identical
    assert len(set(seq[:, T0:].flatten().tolist())) > 5  # a non-degenerate continuation


@torch.inference_mode()
def test_chunked_prefill_equals_full():
    m = tiny("gqa")
    x = torch.randint(0, m.config.vocab_size, (1, 30), generator=torch.Generator().manual_seed(2))
    cache = KVCache.for_model(m, 1, 30)
    a = m(x[:, :17], cache=cache)
    b = m(x[:, 17:], cache=cache)
    ref = m(x)
    assert torch.allclose(torch.cat([a, b], 1), ref, atol=1e-5, rtol=0)
