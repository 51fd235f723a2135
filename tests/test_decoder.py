"""Decoder: the fixed-shape step equals the plain prefix-cache step, chunked prefill equals
one-shot prefill, prefix reuse equals a fresh prefill, and a compiled step gives the same
tokens as the eager one (slow: compiling takes tens of seconds on 2 busy cores).

The reference for the step is `decode_one` against a `KVCache` (host-int length, attention
over the filled prefix only), itself checked against the uncached forward in
test_kvcache.py and against transformers in test_generate.py.
"""
from __future__ import annotations

import pytest
import torch

from olmo2.config import ModelConfig
from olmo2.infer.decoder import Decoder
from olmo2.infer.generate import decode_one, generate
from olmo2.infer.kvcache import KVCache
from olmo2.model import Olmo2

CFG = ModelConfig(vocab_size=197, d_model=64, n_layers=3, n_heads=8, n_kv_heads=2, d_ff=80, max_seq_len=256)


def tiny(seed: int = 0) -> Olmo2:
    torch.manual_seed(seed)
    m = Olmo2(CFG.replace(init_std=0.08)).eval()
    m.reset_parameters()
    return m


def ids(n: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
def test_compiled_step_of_a_bf16_model_gives_eager_tokens():
    """bf16 linears decode eagerly on oneDNN's prepacked copy; compiling hands Inductor the
    plain weights instead (olmo2/quant/linear.py keep_plain). Same greedy tokens."""
    from olmo2.quant.swap import quantize_model
    m = quantize_model(tiny(), "bf16")
    x = ids(6)
    eager = generate(m, x, 24, temperature=0, eos_token_id=[])
    assert torch.equal(generate(m, x, 24, temperature=0, eos_token_id=[], compile=True), eager)


@pytest.mark.slow
@torch.inference_mode()
def test_compiled_step_of_an_int8_model_matches_eager():
    """int8 models compile with max-autotune (Inductor's own weight-only int8 GEMM): the
    step's logits stay within the kernels' bf16-activation rounding of the eager step's."""
    from olmo2.quant.swap import quantize_model
    m = quantize_model(tiny(), "int8")
    x = ids(6)
    eager, comp = Decoder(m, 1, 16), Decoder(m, 1, 16, compile=True)
    le, lc = eager.start(x), comp.start(x)
    for _ in range(4):
        tok = le.argmax(-1)
        le, lc = eager.step(tok), comp.step(tok)
        scale = le.abs().max()
        assert (le - lc).abs().max() <= 2e-2 * scale, float((le - lc).abs().max() / scale)


@torch.inference_mode()
def test_step_equals_prefix_cache_step():
    m = tiny()
    x = ids(9, batch=2)
    steps = 40
    ref_cache = KVCache.for_model(m, 2, 9 + steps)
    ref = [m(x, cache=ref_cache, last_only=True)[:, -1]]
    dec = Decoder(m, 2, 9 + steps)
    got = [dec.start(x)]
    k_ptr = dec.cache.k[0].data_ptr()
    for _ in range(steps):
        tok = ref[-1].argmax(-1)
        ref.append(decode_one(m, tok, ref_cache))
        got.append(dec.step(tok))
    assert dec.cache.length == ref_cache.length == 9 + steps
    assert dec.cache.k[0].data_ptr() == k_ptr  # the buffers were never reallocated
    err = (torch.stack(got) - torch.stack(ref)).abs().max().item()
    assert err <= 1e-5, err
    assert torch.equal(torch.stack(got).argmax(-1), torch.stack(ref).argmax(-1))


@torch.inference_mode()
def test_chunked_prefill_equals_one_shot():
    m = tiny()
    x = ids(37)
    one = Decoder(m, 1, 40).start(x)
    chunked = Decoder(m, 1, 40, prefill_chunk=5)
    got = chunked.start(x)
    assert chunked.cache.length == 37
    assert torch.allclose(got, one, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_chunked_prefill_left_padded_matches_unpadded_rows():
    m = tiny()
    rows = [ids(11, seed=3)[0].tolist(), ids(4, seed=4)[0].tolist()]
    a = generate(m, rows, 12, temperature=0, eos_token_id=[], pad_token_id=0)
    # The same batch through a decoder that prefills 3 tokens at a time.
    from olmo2.infer.generate import prepare_prompts
    x, mask = prepare_prompts(rows)
    dec = Decoder(m, 2, 11 + 12, prefill_chunk=3)
    logits = dec.start(x, mask)
    toks = []
    for _ in range(12):
        t = logits.argmax(-1)
        toks.append(t)
        logits = dec.step(t)
    assert torch.equal(torch.stack(toks, 1), a[:, 11:])
    # (Padded rows against transformers: tests/test_generate.py.)


@torch.inference_mode()
def test_prefix_reuse_equals_fresh_prefill():
    m = tiny()
    dec = Decoder(m, 1, 0, prefill_chunk=4)
    first = ids(20)
    logits = dec.start(first, max_new_tokens=6)
    fed = []
    for _ in range(5):
        t = logits.argmax(-1)
        fed.append(int(t))
        logits = dec.step(t)
    assert dec.held_ids() == first[0].tolist() + fed
    # A longer prompt that extends what is cached: only the new part runs.
    longer = torch.tensor([first[0].tolist() + fed + [3, 1, 4, 1, 5]])
    got = dec.start(longer, max_new_tokens=300 - longer.shape[1] - 1)
    assert dec.reused == 25 and dec.capacity >= 299  # grew past its first size
    assert torch.allclose(got, Decoder(m, 1, 30).start(longer), atol=1e-5, rtol=0)
    # A prompt that diverges early (a trimmed history): rewound to the common prefix.
    other = torch.tensor([first[0, :7].tolist() + [9, 9, 9]])
    got = dec.start(other)
    assert dec.reused == 7
    assert torch.allclose(got, Decoder(m, 1, 10).start(other), atol=1e-5, rtol=0)
    # The same prompt again: everything but the last token comes from the cache.
    dec.start(other)
    assert dec.reused == other.shape[1] - 1
    dec.reset()
    dec.start(other)
    assert dec.reused == 0


@pytest.mark.slow
def test_compiled_step_gives_eager_tokens():
    import torch._dynamo.utils as dynamo_utils
    m = tiny()
    x = ids(6)
    eager = generate(m, x, 24, temperature=0, eos_token_id=[])
    dynamo_utils.counters.clear()
    compiled = generate(m, x, 24, temperature=0, eos_token_id=[], compile=True)
    assert torch.equal(eager, compiled)
    # One graph for all 24 steps: a step that recompiled per position (it once guarded on
    # the cache's host length) falls back to eager after Dynamo's recompile limit.
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 1
    assert dynamo_utils.counters["frames"]["total"] == 1
    # A second model of the same shapes: the frozen (constant-folded) weights of the first
    # compile must not be served to it (docs/cpu-kernels.md, pitfall 4).
    m2 = tiny(seed=5)
    eager2 = generate(m2, x, 24, temperature=0, eos_token_id=[])
    assert not torch.equal(eager2, eager)
    assert torch.equal(generate(m2, x, 24, temperature=0, eos_token_id=[], compile=True), eager2)


@torch.inference_mode()
def test_step_ignores_unwritten_positions():
    # The step attends over the whole buffer with the unwritten keys masked; a NaN there
    # (uninitialised memory) must not reach the output (0 weight × NaN = NaN otherwise).
    m = tiny()
    dec = Decoder(m, 1, 30)
    for buf in dec.cache.k + dec.cache.v:
        buf.fill_(float("nan"))
    logits = dec.start(ids(5))
    for _ in range(3):
        logits = dec.step(logits.argmax(-1))
    assert dec.cache.zeroed
    assert not torch.isfinite(logits).all()  # the poison is real: zeroed buffers are what prevents it
    dec = Decoder(m, 1, 30)
    logits = dec.start(ids(5))
    for _ in range(20):
        logits = dec.step(logits.argmax(-1))
        assert torch.isfinite(logits).all()
