"""Sampling: processors equal transformers' warpers, seeds reproduce, degenerate settings
equal greedy, and invalid values raise GenerationError naming the field."""
from __future__ import annotations

import pytest
import torch

from olmo2.config import ModelConfig
from olmo2.errors import GenerationError
from olmo2.infer.generate import generate, stream_generate
from olmo2.infer.sampling import (SamplingParams, apply_repetition_penalty, apply_top_k, apply_top_p, mark_seen,
                                  sample_next)
from olmo2.model import Olmo2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=157, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=64,
                      init_std=0.08, eos_token_id=155, pad_token_id=156)
    m = Olmo2(cfg).eval()
    m.reset_parameters()
    return m


X = torch.randint(0, 150, (2, 6), generator=torch.Generator().manual_seed(0))


def test_seed_reproducible(model):
    a = generate(model, X, 20, temperature=1.0, seed=123, eos_token_id=[])
    b = generate(model, X, 20, temperature=1.0, seed=123, eos_token_id=[])
    c = generate(model, X, 20, temperature=1.0, seed=124, eos_token_id=[])
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(generate(model, X, 10, generator=g1, eos_token_id=[]),
                       generate(model, X, 10, generator=g2, eos_token_id=[]))


def test_degenerate_sampling_equals_greedy(model):
    greedy = generate(model, X, 20, temperature=0, eos_token_id=[])
    assert torch.equal(greedy, generate(model, X, 20, temperature=0, eos_token_id=[]))
    assert torch.equal(greedy, generate(model, X, 20, temperature=1.3, top_k=1, seed=1, eos_token_id=[]))
    assert torch.equal(greedy, generate(model, X, 20, temperature=0.9, top_p=1e-6, seed=2, eos_token_id=[]))
    # temperature 0 ignores top-k/top-p entirely
    assert torch.equal(greedy, generate(model, X, 20, temperature=0, top_k=5, top_p=0.5, eos_token_id=[]))


def test_sampling_is_not_greedy(model):
    greedy = generate(model, X, 30, temperature=0, eos_token_id=[])
    assert not torch.equal(greedy, generate(model, X, 30, temperature=1.5, seed=0, eos_token_id=[]))


def test_top_k_top_p_restrict_support():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    top5 = logits.topk(5).indices
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        tok = sample_next(logits, SamplingParams(temperature=2.0, top_k=5), generator=g)
        assert all(int(t) in top5[i].tolist() for i, t in enumerate(tok))
    kept = apply_top_p(logits, 0.5).isfinite()
    probs = logits.softmax(-1)
    for i in range(4):  # the kept set is the smallest top set reaching 0.5
        p = probs[i][kept[i]].sum()
        assert p >= 0.5 and p - probs[i][kept[i]].min() < 0.5


@pytest.mark.hf
def test_processors_equal_transformers():
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)
    torch.manual_seed(1)
    scores = torch.randn(3, 100) * 3
    ids = torch.randint(0, 100, (3, 12))
    seen = torch.zeros(3, 100, dtype=torch.bool)
    mark_seen(seen, ids)
    assert torch.equal(apply_repetition_penalty(scores, seen, 1.7), RepetitionPenaltyLogitsProcessor(1.7)(ids, scores))
    assert torch.equal(apply_top_k(scores, 7), TopKLogitsWarper(7)(ids, scores))
    for p in (0.05, 0.3, 0.9, 0.999):
        assert torch.equal(apply_top_p(scores, p), TopPLogitsWarper(p)(ids, scores))
    from olmo2.infer.sampling import process_logits
    params = SamplingParams(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.2)
    ref = TopPLogitsWarper(0.8)(ids, TopKLogitsWarper(20)(ids, TemperatureLogitsWarper(0.7)(
        ids, RepetitionPenaltyLogitsProcessor(1.2)(ids, scores))))
    assert torch.equal(process_logits(scores, params, seen), ref)


def test_mark_seen_ignores_pads():
    seen = torch.zeros(2, 10, dtype=torch.bool)
    ids = torch.tensor([[9, 9, 3], [1, 2, 9]])
    valid = torch.tensor([[False, False, True], [True, True, True]])
    mark_seen(seen, ids, valid)
    assert seen[0].nonzero().flatten().tolist() == [3]
    assert seen[1].nonzero().flatten().tolist() == [1, 2, 9]


@pytest.mark.parametrize("kw, field", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(seed="x"), "seed"),
])
def test_invalid_values_raise(model, kw, field):
    with pytest.raises(GenerationError, match=field):
        generate(model, X, 5, **kw)
    with pytest.raises(GenerationError, match=field):
        stream_generate(model, None, [1, 2, 3], 5, **kw)  # raises before iteration starts


def test_prompt_too_long_raises(model):
    with pytest.raises(GenerationError, match="prompt is 60 tokens .*model context is 64; shorten the prompt"):
        generate(model, torch.zeros(1, 60, dtype=torch.long), 10)
    with pytest.raises(GenerationError, match="max_new_tokens"):
        generate(model, X, -3)
    generate(model, torch.zeros(1, 54, dtype=torch.long), 10, temperature=0)  # exactly fits
