"""Log-likelihood backends: native (grouped prefill + KV reuse) vs a plain transformers forward."""
from __future__ import annotations

import pytest
import torch

from eval_fixtures import make_checkpoint
from olmo2.eval.scoring import LoglikRequest, NativeBackend, encode_pair, load_backend

REQS = [
    LoglikRequest("Q: What is human life expectancy in the United States?\nA:", " Human life expectancy is 78 years."),
    LoglikRequest("Q: What is human life expectancy in the United States?\nA:", " The cat sat."),
    LoglikRequest("Q: What is human life expectancy in the United States?\nA:", " 6"),
    LoglikRequest("The cat sat on the ", "mat."),          # trailing space moves to the continuation
    LoglikRequest("Question: How many trees?\nAnswer:", " So the answer is 6."),
    LoglikRequest("Question: How many trees?\nAnswer:", " 1,234"),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "m")


def _reference(ckpt, reqs):
    """Sum of continuation log-probs from transformers' Olmo2ForCausalLM, one full forward each."""
    transformers = pytest.importorskip("transformers")
    from olmo2.tokenizer import Tokenizer
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    tok = Tokenizer.from_pretrained(ckpt)
    out = []
    for r in reqs:
        ctx, cont = encode_pair(tok.encode, r.context, r.continuation)
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            lp = torch.log_softmax(hf(ids).logits[0].float(), -1)
        out.append(sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    return out


def test_encode_pair_moves_trailing_space(ckpt):
    from olmo2.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(ckpt)
    ctx, cont = encode_pair(tok.encode, "The cat sat on the ", "mat.")
    assert tok.decode(ctx) == "The cat sat on the" and tok.decode(cont) == " mat."


@pytest.mark.parametrize("batch_size", [1, 3, "auto"])
def test_native_equals_transformers_forward(ckpt, batch_size):
    ref = _reference(ckpt, REQS)
    native = load_backend("native", str(ckpt), batch_size=batch_size)
    got = native.loglikelihood(REQS)
    assert [g.n_tokens > 0 for g in got] == [True] * len(REQS)
    for g, r in zip(got, ref):
        assert abs(g.logprob - r) <= 1e-4, (g.logprob, r)


def test_native_and_hf_backends_agree(ckpt):
    pytest.importorskip("transformers")
    native = load_backend("native", str(ckpt), batch_size=4)
    hf = load_backend("hf", str(ckpt), batch_size=4)
    a, b = native.loglikelihood(REQS), hf.loglikelihood(REQS)
    for x, y in zip(a, b):
        assert abs(x.logprob - y.logprob) <= 1e-4 and x.is_greedy == y.is_greedy and x.n_tokens == y.n_tokens


def test_native_reuses_context_prefill(ckpt, monkeypatch):
    """Three choices sharing one context: the context tokens go through the model once."""
    native = load_backend("native", str(ckpt), batch_size=8)
    seen = []
    orig = native.model.forward

    def spy(ids, *a, **k):
        seen.append(tuple(ids.shape))
        return orig(ids, *a, **k)
    monkeypatch.setattr(native.model, "forward", spy)
    native.loglikelihood(REQS[:3])
    ctx_len = len(native.encode(REQS[0].context))
    assert seen[0] == (1, ctx_len) and seen[1][0] == 3 and seen[1][1] < ctx_len


def test_greedy_generation_matches_hf(ckpt):
    pytest.importorskip("transformers")
    native = load_backend("native", str(ckpt), batch_size=2)
    hf = load_backend("hf", str(ckpt))
    prompts = ["Question: How many trees?\nAnswer:", "The cat", "Q: What is human life expectancy?\nA:"]
    a = native.generate_until(prompts, stops=["\n\n", "Question:"], max_new_tokens=12)
    b = hf.generate_until(prompts, stops=["\n\n", "Question:"], max_new_tokens=12)
    assert a == b and all(isinstance(x, str) for x in a)
    assert not any("\n\n" in x or "Question:" in x for x in a)
