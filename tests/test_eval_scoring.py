"""Log-likelihood backends: native (grouped prefill + KV reuse) vs a plain transformers forward."""
from __future__ import annotations

import pytest
import torch

from eval_fixtures import make_checkpoint
from olmo2.eval.scoring import LoglikRequest, encode_pair, load_backend

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


def test_native_shares_prefix_and_contexts(ckpt, monkeypatch):
    """The shared few-shot prefix runs once for the whole call (across batches), each context's
    own tokens once, and its choices as a chunk on top; results still equal transformers."""
    from olmo2.eval.truthfulqa import plain_context
    reqs = [LoglikRequest(plain_context(q), c) for q in ("Why?", "Who is it?", "What is 2+2?")
            for c in (" Yes.", " No, it is not.", " 4")]
    native = load_backend("native", str(ckpt), batch_size=4)  # 2 contexts' choices per batch at most
    seen = []
    orig = native.model.model.forward

    def spy(ids, *a, **k):
        seen.append(tuple(ids.shape))
        return orig(ids, *a, **k)
    monkeypatch.setattr(native.model.model, "forward", spy)
    got = native.loglikelihood(reqs)
    ctx_lens = [len(native.encode(plain_context(q))) for q in ("Why?", "Who is it?", "What is 2+2?")]
    P = native.prefix_tokens_computed
    assert P >= 32 and P < min(ctx_lens) and seen[0] == (1, P)
    assert sum(1 for sh in seen if sh == (1, P)) == 1          # the prefix once, though 3 batches ran
    assert all(sh[1] < 32 for sh in seen[1:]), seen  # contexts and choices only: nothing re-reads the prefix
    for g, r in zip(got, _reference(ckpt, reqs)):
        assert abs(g.logprob - r) <= 1e-4


def test_greedy_generation_matches_hf(ckpt):
    pytest.importorskip("transformers")
    native = load_backend("native", str(ckpt), batch_size=2)
    hf = load_backend("hf", str(ckpt))
    from olmo2.eval.truthfulqa import plain_context
    prompts = ["Question: How many trees?\nAnswer:", "The cat", "Q: What is human life expectancy?\nA:",
               plain_context("Why?"), plain_context("Who is it?"), plain_context("Where is 1,239?")]
    a = native.generate_until(prompts, stops=["\n\n", "Question:"], max_new_tokens=12)
    b = hf.generate_until(prompts, stops=["\n\n", "Question:"], max_new_tokens=12)
    assert a == b and all(isinstance(x, str) for x in a)
    assert not any("\n\n" in x or "Question:" in x for x in a)
    # rows that finish early leave the batch (compaction): one batch of all six, with a stop
    # string taken from one row's own output so it ends after a few tokens while others go on,
    # still equals transformers prompt by prompt
    long = load_backend("native", str(ckpt), batch_size=16)
    free = long.generate_until(prompts, stops=[], max_new_tokens=12)
    stop = next(x[2:5] for x in free if len(x) >= 8 and x[2:5].strip())
    c = long.generate_until(prompts, stops=[stop], max_new_tokens=12)
    assert c == hf.generate_until(prompts, stops=[stop], max_new_tokens=12)
    assert any(len(x) < len(f) for x, f in zip(c, free)) and any(x == f for x, f in zip(c, free))


def test_auto_batch_size_bounds_tokens_and_logits():
    from olmo2.eval.scoring import AUTO_LOGITS_BYTES, rows_per_step
    assert rows_per_step(8, 100, 100352) == 8
    rows = rows_per_step("auto", 35, 100352)  # dolma2 vocab: the logits bound, not the token budget
    assert rows * 35 * 100352 * 8 <= AUTO_LOGITS_BYTES and (rows + 1) * 35 * 100352 * 8 > AUTO_LOGITS_BYTES - 35 * 100352 * 8
    assert rows_per_step("auto", 35, 320) == 16384 // 35 and rows_per_step("auto", 10**6) == 1
