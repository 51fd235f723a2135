"""The vllm backend's mapping onto vLLM's API, checked against the hf backend.

vLLM cannot be installed here (it needs a GPU), so `vllm` is a stand-in module written in
this test: the four names the backend uses (LLM.generate with prompt_logprobs / greedy
max_tokens / stop, SamplingParams, TokensPrompt), computed with transformers on a tiny
checkpoint. This checks our side of the contract (token ids, which positions are summed,
rank-1 = greedy, stop handling), not vLLM itself.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest
import torch


@dataclass
class _Logprob:
    logprob: float
    rank: int


@dataclass
class _SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    prompt_logprobs: int | None = None
    stop: list | None = None


@dataclass
class _TokensPrompt:
    prompt_token_ids: list = field(default_factory=list)


def _fake_vllm(model, tok):
    class LLM:
        def __init__(self):
            self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=512))

        def get_tokenizer(self):
            return tok

        def generate(self, prompts, sp, use_tqdm=False):
            outs = []
            for p in prompts:
                ids = list(p.prompt_token_ids)
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
                plp = [None] + [{t: _Logprob(float(logp[i - 1, t]), int((logp[i - 1] > logp[i - 1, t]).sum()) + 1)}
                                for i, t in enumerate(ids) if i > 0]
                gen = ids[:]
                text = ""
                for _ in range(sp.max_tokens):
                    with torch.no_grad():
                        nxt = int(model(torch.tensor([gen])).logits[0, -1].argmax())
                    gen.append(nxt)
                    text = tok.decode(gen[len(ids):], skip_special_tokens=True)
                    if nxt == tok.eos_token_id or any(s in text for s in (sp.stop or [])):
                        break
                outs.append(types.SimpleNamespace(prompt_logprobs=plp if sp.prompt_logprobs else None,
                                                  outputs=[types.SimpleNamespace(text=text)]))
            return outs
    return types.SimpleNamespace(LLM=LLM, SamplingParams=_SamplingParams, TokensPrompt=_TokensPrompt)


def test_vllm_mapping_matches_the_hf_backend(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from eval_fixtures import make_checkpoint
    from olmo2.eval.scoring import HFBackend, LoglikRequest
    from olmo2.eval.vllm_backend import VLLMBackend
    ck = make_checkpoint(tmp_path / "m", n_layers=1)
    model = transformers.AutoModelForCausalLM.from_pretrained(ck).eval()
    tok = transformers.AutoTokenizer.from_pretrained(ck)
    fake = _fake_vllm(model, tok)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    vb = VLLMBackend(fake.LLM(), tok, str(ck))
    hf = HFBackend(model, tok, 4, str(ck), max_length=512)
    reqs = [LoglikRequest("Question: There are 15 trees", " in the grove."),
            LoglikRequest("Q: What is human life expectancy?\nA:", " 78 years"),
            LoglikRequest("The cat sat on the ", "mat.")]  # trailing space moves to the continuation
    got, want = vb.loglikelihood(reqs), hf.loglikelihood(reqs)
    for g, w in zip(got, want):
        assert g.n_tokens == w.n_tokens and g.is_greedy == w.is_greedy
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
    prompts = ["Question: There are 15 trees in the grove. How many trees? Answer:", "The cat"]
    assert vb.generate_until(prompts, ["\n\n", "Question:"], 12) == hf.generate_until(prompts, ["\n\n", "Question:"], 12)


def test_vllm_missing_is_a_clear_error(monkeypatch):
    from olmo2.errors import Olmo2Error
    from olmo2.eval.scoring import load_backend
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(Olmo2Error, match="needs vLLM"):
        load_backend("vllm", "some/model")
