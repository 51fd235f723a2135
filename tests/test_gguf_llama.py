"""llama.cpp (through llama-cpp-python) runs our GGUFs: logits, greedy tokens, tokenization.

Slow (llama-cpp-python builds from source, ~10 min; tests skip without it). Users of this
model family have met converters whose GGUFs passed every shape check and produced badly
wrong logits, so this compares numbers: llama.cpp's logits on an f32 GGUF of a tiny random
OLMo 2 (weights scaled so logits are O(1), norms perturbed; tests/gguf_fixtures.py) against
olmo2's own forward, within 1e-3, and the greedy continuations token for token; then the
tokenizer: llama.cpp's tokenization of tricky strings against the `tokenizers` library's,
for the real dolma2 tokenizer and the demo BPE.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gguf_fixtures import demo_tokenizer, make_checkpoint
from olmo2.cli import main
from olmo2.tokenizer import Tokenizer

pytestmark = pytest.mark.slow


class _LazyLlamaCpp:
    """Imports llama_cpp on first use, inside a test: a module-level importorskip would skip at
    collection, before `-m "not slow"` deselects these tests, and CI would report a skip."""

    def __getattr__(self, name):
        if name.startswith("__"):  # pytest's collection probes module attributes
            raise AttributeError(name)
        return getattr(pytest.importorskip("llama_cpp"), name)


llama_cpp = _LazyLlamaCpp()

TRICKY = [
    "Hello world", "Language modeling is ", "\n", "\n\n\n\n", "a\n\n\nb\r\n\r\nc", "  two leading", "trailing   ",
    "\t\ttabs\t", "1234567890", "3.14159, 1,000,000 and 2024-11-29", "I'm sure you'RE right; WE'LL see, they'd",
    "naïve café, Straße, 東京タワー, Ωμέγα, 🙂👍🏽", "<|endoftext|>", "text<|endoftext|>more<|pad|>",
    "<|user|>\nHi\n<|assistant|>\n", "<|extra_id_1|> and |||EMAIL_ADDRESS|||", "x = [1, 2, 3]  # list\n    return x",
    "!!!???...", "\u00a0nbsp\u2003em space", "a" * 300, "    \n    \n",
]


def _no_extra_bufts(monkeypatch) -> None:
    """llama.cpp without its extra CPU buffer types (AMX tiles, repacked quant layouts).

    With them, llama-cpp-python 0.3.36 built natively on an AMX Xeon segfaults on the first
    eval of any Q8_0/Q4_0 file, ours or not; without them the same files run and their logits
    meet the bounds below. The binding exposes no keyword for the model param, so wrap the
    defaults it reads."""
    import llama_cpp.llama as ll
    base = ll.llama_cpp.llama_model_default_params

    def params():
        p = base()
        p.use_extra_bufts = False
        return p
    monkeypatch.setattr(ll.llama_cpp, "llama_model_default_params", params)


def _llama(path, **kw):
    # f32 KV cache (GGML_TYPE_F32 = 0): llama.cpp's default f16 cache alone moves logits by ~5e-3
    kw = {"type_k": 0, "type_v": 0, **kw}
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False, seed=0, **kw)


def _llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _greedy_llama(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    out = []
    for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(t))
        if len(out) == n:
            break
    return out


def _greedy_olmo2(model, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(n):  # full recompute: the reference path, independent of the KV cache
            nxt = int(model(x)[0, -1].argmax())
            out.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
    return out


@pytest.fixture(scope="module")
def dolma2(dolma2_tokenizer_path):
    return Tokenizer.from_file(dolma2_tokenizer_path)


@pytest.mark.parametrize("shape", [dict(), dict(n_kv_heads=2, n_layers=3)], ids=["mha", "gqa"])
def test_f32_logits_and_greedy_tokens_match_llama_cpp(dolma2, tmp_path, shape):
    d, model = make_checkpoint(tmp_path / "m", dolma2, **shape)
    out = tmp_path / "m.gguf"
    assert main(["convert", "gguf", str(d), "--out", str(out)]) == 0
    ids = dolma2.encode("The capital of France is Paris. It has 2,102,650 people.\n\nQ: and Rome?")
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0].numpy()
    assert ref.std() > 0.5  # logits large enough that 1e-3 is a real tolerance
    llm = _llama(out, logits_all=True)
    got = _llama_logits(llm, ids)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=0)
    assert _greedy_llama(llm, ids, 24) == _greedy_olmo2(model, ids, 24)


@pytest.mark.parametrize("qtype,tol", [("bf16", 0.05), ("q8_0", 0.05), ("q4_0", 0.5)])
def test_lower_precision_logits_stay_close(dolma2, tmp_path, qtype, tol, monkeypatch):
    """Not exact by design; a loose bound (relative to the logit spread) still catches a
    quantized tensor written in the wrong layout, which gives errors of the logits' own size."""
    _no_extra_bufts(monkeypatch)
    d, model = make_checkpoint(tmp_path / "m", dolma2, d_model=128, n_heads=4, d_ff=256)
    out = tmp_path / f"m.{qtype}.gguf"
    assert main(["convert", "gguf", str(d), "--out", str(out), "--type", qtype]) == 0
    ids = dolma2.encode("One, two, three, four, five, six, seven, eight.")
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0].numpy()
    got = _llama_logits(_llama(out, logits_all=True), ids)
    rel = np.abs(got - ref).mean() / ref.std()
    assert rel < tol, rel


def test_dolma2_tokenization_matches_tokenizers(dolma2, tmp_path):
    d, _ = make_checkpoint(tmp_path / "m", dolma2, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64)
    out = tmp_path / "t.gguf"
    assert main(["convert", "gguf", str(d), "--out", str(out), "--type", "f16"]) == 0
    llm = _llama(out, vocab_only=True)
    for text in TRICKY:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == dolma2.encode(text), text
    assert dolma2.encode("Hello world") == [9906, 1917]  # the published dolma2 vector


def test_demo_bpe_tokenization_matches_tokenizers(tmp_path):
    tok = demo_tokenizer(tmp_path, vocab_size=500)
    d, _ = make_checkpoint(tmp_path / "m", tok, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64)
    out = tmp_path / "demo.gguf"
    assert main(["convert", "gguf", str(d), "--out", str(out)]) == 0
    llm = _llama(out, vocab_only=True)
    for text in TRICKY:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text), text


def test_chat_template_renders_the_tulu_prompt(dolma2, tmp_path):
    """llama-cpp-python renders the embedded Jinja template; the prompt must be ours exactly."""
    d, _ = make_checkpoint(tmp_path / "m", dolma2, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64)
    out = tmp_path / "c.gguf"
    assert main(["convert", "gguf", str(d), "--out", str(out)]) == 0
    Jinja2ChatFormatter = pytest.importorskip("llama_cpp.llama_chat_format").Jinja2ChatFormatter
    llm = _llama(out, vocab_only=True)
    tmpl = llm.metadata["tokenizer.chat_template"]
    fmt = Jinja2ChatFormatter(tmpl, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+3?"}]
    assert fmt(messages=msgs).prompt == Tokenizer.from_pretrained(d).apply_chat_template(msgs)
