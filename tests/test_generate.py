"""generate(): token-for-token parity with transformers (greedy, EOS padding, left-padded
batches), stop ids and stop strings, streaming detokenization, and the generate/chat CLI.

The reference is a randomly initialised `transformers.Olmo2ForCausalLM` whose weights are
copied into ours; weights are scaled up so greedy continuations vary instead of repeating
one token. Streaming is checked with a scripted fake model that emits chosen tokens from
a byte-level BPE trained here with few merges, so emoji and CJK span several tokens.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import hf_olmo2
from olmo2.config import ModelConfig
from olmo2.errors import GenerationError
from olmo2.infer.generate import GenerationStats, generate, stream_generate
from olmo2.infer.stream import IncrementalDecoder, StopStringHolder
from olmo2.model import Olmo2

REPO = Path(__file__).resolve().parents[1]


def pair(kind: str = "gqa", seed: int = 0, scale: float = 3.0):
    """(transformers model, our model) with identical, scaled-up random weights."""
    hf = hf_olmo2(kind, seed=seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" not in name:
                p.mul_(scale)
    ours = Olmo2(ModelConfig.from_hf_dict(hf.config.to_dict())).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return hf, ours


def prompt(n: int, vocab: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab - 2, (batch, n), generator=torch.Generator().manual_seed(seed))


# ---- parity with transformers ------------------------------------------------------
@pytest.mark.hf
@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_greedy_matches_transformers(kind):
    hf, ours = pair(kind)
    x = prompt(11, hf.config.vocab_size)
    ref = hf.generate(x, max_new_tokens=48, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = generate(ours, x, 48, temperature=0, eos_token_id=[])
    assert got.shape == ref.shape == (1, 59)
    assert torch.equal(got, ref)


@pytest.mark.hf
def test_greedy_repetition_penalty_matches_transformers():
    hf, ours = pair("gqa", seed=1)
    x = prompt(9, hf.config.vocab_size, seed=4)
    ref = hf.generate(x, max_new_tokens=32, do_sample=False, repetition_penalty=1.3, eos_token_id=None, pad_token_id=0)
    got = generate(ours, x, 32, temperature=0, repetition_penalty=1.3, eos_token_id=[])
    assert torch.equal(got, ref)


@pytest.mark.hf
def test_eos_then_pad_matches_transformers():
    hf, ours = pair("gqa")
    x = prompt(7, hf.config.vocab_size, seed=2, batch=3)
    free = generate(ours, x, 24, temperature=0, eos_token_id=[])
    # Pick as EOS a token row 0 emits early, so rows finish at different steps.
    eos = int(free[0, 7 + 3])
    pad = hf.config.vocab_size - 1
    ref = hf.generate(x, max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    got = generate(ours, x, 24, temperature=0, eos_token_id=eos, pad_token_id=pad)
    assert got.shape == ref.shape
    assert torch.equal(got, ref)
    assert (got[0, 7:] == eos).nonzero()[0].item() <= 3  # EOS kept, then padding


@pytest.mark.hf
def test_left_padded_batch_matches_transformers_and_single():
    hf, ours = pair("gqa", seed=2)
    V = hf.config.vocab_size
    pad = V - 1
    rows = [prompt(n, V, seed=10 + n)[0].tolist() for n in (5, 12, 8)]
    got = generate(ours, rows, 20, temperature=0, eos_token_id=[], pad_token_id=pad)
    assert got.shape == (3, 12 + 20)
    for i, r in enumerate(rows):
        single = generate(ours, torch.tensor([r]), 20, temperature=0, eos_token_id=[])
        assert got[i, 12:].tolist() == single[0, len(r):].tolist(), f"row {i}"
        assert got[i, :12 - len(r)].eq(pad).all()
    # Same through ids + attention_mask, and against transformers' own left padding.
    ids = got[:, :12]
    mask = ids.ne(pad).long()
    again = generate(ours, ids, 20, temperature=0, eos_token_id=[], attention_mask=mask, pad_token_id=pad)
    assert torch.equal(again, got)
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=pad)
    assert torch.equal(got, ref)


def test_right_padding_is_refused():
    _, ours = pair("mha")
    ids = prompt(6, 300, batch=2)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    with pytest.raises(GenerationError, match="left-padded"):
        generate(ours, ids, 4, temperature=0, attention_mask=mask)


def test_stop_token_ids():
    _, ours = pair("gqa")
    x = prompt(6, 257, seed=5)
    free = generate(ours, x, 16, temperature=0, eos_token_id=[])
    stop = int(free[0, 6 + 4])
    first = (free[0, 6:] == stop).nonzero()[0].item()
    got = generate(ours, x, 16, temperature=0, eos_token_id=[], stop_token_ids=[stop])
    assert got.shape[1] == 6 + first + 1 and int(got[0, -1]) == stop
    assert torch.equal(got[0], free[0, :6 + first + 1])


# ---- a byte-level BPE with few merges, and a model that says what we script --------
@pytest.fixture(scope="module")
def bpe_tok():
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from olmo2.tokenizer import Tokenizer
    tk = HFTok(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["hello world, the cat sat on the mat. STOP here and there."] * 20 + ["日本語 🙂 café"]
    tk.train_from_iterator(corpus, trainer)
    return Tokenizer(tk)


class ScriptedModel(nn.Module):
    """Duck-types Olmo2 for generation: after the prompt, emits `script` token by token."""

    def __init__(self, script: list[int], prompt_len: int, vocab: int, eos: int, max_seq_len: int = 512):
        super().__init__()
        self.script, self.prompt_len = script, prompt_len
        self.config = ModelConfig(vocab_size=vocab, d_model=8, n_layers=1, n_heads=1, n_kv_heads=1, d_ff=8,
                                  max_seq_len=max_seq_len, eos_token_id=eos, pad_token_id=eos)
        self.lm_head = nn.Linear(8, vocab, bias=False)

    def forward(self, input_ids, positions=None, cache=None, attn_mask=None, last_only=False):
        B, T = input_ids.shape
        if T == 1 and positions is not None:
            # a Decoder step: its cache view's host length is not the position (decoder.py
            # _SlotView); the device-held position is
            n = int(positions.reshape(-1)[0]) + 1
        else:
            cache.length += T
            n = cache.length
        i = n - self.prompt_len  # index of the token to emit next
        logits = torch.zeros(B, 1, self.config.vocab_size)
        logits[:, :, self.script[i] if i < len(self.script) else self.config.eos_token_id] = 10.0
        return logits


TEXT = "the cat 日本語 🙂 café sat. "


def test_bpe_splits_multibyte_chars(bpe_tok):
    pieces = [bpe_tok.decode([i]) for i in bpe_tok.encode("🙂日")]
    assert any("\ufffd" in p for p in pieces), "the test tokenizer must split multi-byte characters"


def test_incremental_decoder_pieces_are_clean(bpe_tok):
    ids = bpe_tok.encode(TEXT * 3)
    dec = IncrementalDecoder(bpe_tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == bpe_tok.decode(ids) == TEXT * 3
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p == "") > 3  # bytes really were held back


def test_stop_string_holder():
    h = StopStringHolder(["STOP", "\n\n"])
    out = [h.push(t) for t in ["ab", "cS", "T", "x S", "TO", "Pzz"]]
    assert "".join(o for o, _ in out) == "abcSTx "
    assert out[-1][1] and not out[-2][1]
    h = StopStringHolder(["STOP"])
    assert h.push("no S")[0] == "no " and h.flush() == "S"


def test_stream_generate_pieces_and_stats(bpe_tok):
    ids = bpe_tok.encode(TEXT * 2)
    prompt_ids = bpe_tok.encode("hello")
    model = ScriptedModel(ids + [bpe_tok.eos_id], len(prompt_ids), 384, bpe_tok.eos_id)
    stats = GenerationStats()
    pieces = list(stream_generate(model, bpe_tok, prompt_ids, 200, temperature=0, stats=stats))
    assert "".join(pieces) == TEXT * 2
    assert all(p and "\ufffd" not in p for p in pieces)
    assert stats.new_tokens == len(ids) + 1 and stats.stop_reason == "eos" and stats.prompt_tokens == len(prompt_ids)


@pytest.mark.parametrize("stop", ["STOP", "🙂", "P h", "語 🙂"])
def test_stream_stop_strings_not_emitted(bpe_tok, stop):
    text = "the cat 日本語 🙂 saSTOP here and there 🙂."
    ids = bpe_tok.encode(text)
    model = ScriptedModel(ids, 1, 384, bpe_tok.eos_id)
    stats = GenerationStats()
    pieces = list(stream_generate(model, bpe_tok, [5], 200, temperature=0, stop_strings=[stop, "never"], stats=stats))
    assert "".join(pieces) == text[:text.index(stop)]
    assert stats.stop_reason == "stop_string"
    assert stats.new_tokens < len(ids)  # stopped early, not at the end of the script


def test_generate_stop_strings_trim_ids(bpe_tok):
    text = "the cat sat. STOP here and there"
    ids = bpe_tok.encode(text)
    model = ScriptedModel(ids, 2, 384, bpe_tok.eos_id)
    out = generate(model, [7, 8], 100, temperature=0, stop_strings=["STOP"], tokenizer=bpe_tok)
    new = out[0, 2:].tolist()
    decoded = bpe_tok.decode(new)
    assert "STOP" not in decoded and "S" not in decoded.replace("sat", "")
    assert decoded == "the cat sat. "[:len(decoded)] and len(decoded) >= len("the cat sat.")
    with pytest.raises(GenerationError, match="tokenizer"):
        generate(model, [7, 8], 10, stop_strings=["x"])


def test_prompt_too_long_and_bad_values():
    _, ours = pair("mha")  # max_position_embeddings 256
    with pytest.raises(GenerationError, match=r"prompt is 250 tokens .*context is 256.*--max-new-tokens"):
        generate(ours, prompt(250, 300), 10, temperature=0)
    with pytest.raises(GenerationError, match="prompt is 300 tokens, model context is 256"):
        list(stream_generate(ours, None, prompt(300, 300)[0].tolist(), 1))
    with pytest.raises(GenerationError, match="max_new_tokens"):
        generate(ours, prompt(5, 300), 0)
    with pytest.raises(GenerationError, match="empty"):
        generate(ours, [[]], 3)


# ---- CLI ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, bpe_tok):
    from olmo2.checkpoint import save_model
    cfg = ModelConfig(vocab_size=384, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=128,
                      eos_token_id=bpe_tok.eos_id, pad_token_id=bpe_tok.pad_id)
    torch.manual_seed(0)
    model = Olmo2(cfg)
    model.reset_parameters()
    out = tmp_path_factory.mktemp("gen") / "tiny"
    save_model(model, out, tokenizer=bpe_tok)
    return out


def test_cli_generate(ckpt, capsys):
    from olmo2.cli import main
    args = ["generate", "--model", str(ckpt), "--prompt", "the cat", "--max-new-tokens", "12", "--temperature", "0"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "tok/s" in first.err
    assert main(args) == 0
    assert capsys.readouterr().out == first.out  # greedy is deterministic
    assert main(args[:-2] + ["--temperature", "0.7", "--top-p", "0.9", "--seed", "3", "--chat", "--stop", "zz"]) == 0
    assert main(args[:-2] + ["--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_cli_generate_matches_library(ckpt, capsys, bpe_tok):
    from olmo2.checkpoint import load_model
    from olmo2.cli import main
    assert main(["generate", "--model", str(ckpt), "--prompt", "the cat", "--max-new-tokens", "10",
                 "--temperature", "0"]) == 0
    model = load_model(ckpt)
    ids = bpe_tok.encode("the cat")
    out = generate(model, [ids], 10, temperature=0)
    assert capsys.readouterr().out == bpe_tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True) + "\n"


def test_cli_chat_in_process(ckpt, capsys, monkeypatch):
    from olmo2.cli import main
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi there\n/reset\n\nsecond turn\n/exit\nnot read\n"))
    assert main(["chat", "--model", str(ckpt), "--max-new-tokens", "8", "--temperature", "0", "--system", "Be brief."]) == 0
    cap = capsys.readouterr()
    assert "false, biased or harmful" in cap.err and "history cleared" in cap.err
    assert cap.out.count("\n") == 2  # two replies


def test_cli_chat_trims_history(ckpt, capsys, monkeypatch):
    from olmo2.cli import main
    # max_seq_len 128: each turn is ~30+ tokens of prompt plus 40 new, so old turns must go.
    lines = "".join(f"turn number {i} about the cat and the mat\n" for i in range(6))
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["chat", "--model", str(ckpt), "--max-new-tokens", "40", "--temperature", "0"]) == 0
    cap = capsys.readouterr()
    assert "dropped the" in cap.err
    assert cap.out.count("\n") == 6


def test_cli_chat_subprocess_pipe(ckpt):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "olmo2", "chat", "--model", str(ckpt), "--max-new-tokens", "5",
                        "--seed", "1"], input="Hi\n/exit\n", capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "must not be relied on" in r.stderr
    assert r.stdout.endswith("\n")


# bf16 keeps 8 mantissa bits (relative step 2**-8 = 0.4%); through these 3 layers the logits
# of both implementations move ~0.03 from fp32 (range ~1.7). Stated tolerance: logits within
# 0.1 of fp32 (6% of the range), and within 2x transformers' own bf16 error.
BF16_LOGIT_TOL = 0.1


@pytest.mark.parametrize("seed", [0, 2])
def test_bfloat16_model_generates(seed):
    """bf16 forward and greedy decode against transformers in bf16 and fp32 (not ourselves)."""
    hf, ours = pair("gqa", seed=seed)
    x = prompt(6, 257, seed=3)
    with torch.no_grad():
        ref32 = hf(x).logits
        hf16, ours16 = hf.to(torch.bfloat16), ours.to(torch.bfloat16)
        err_hf = (hf16(x).logits.float() - ref32).abs().max().item()
        err_ours = (ours16(x).float() - ref32).abs().max().item()
    assert err_ours < BF16_LOGIT_TOL and err_ours <= 2 * err_hf, (err_ours, err_hf)

    got = generate(ours16, x, 12, temperature=0, eos_token_id=[])
    assert got.shape == (1, 18) and got.dtype == torch.long
    # Every token our bf16 decode chose is a greedy choice under fp32 up to bf16 noise.
    with torch.no_grad():
        l32 = hf.to(torch.float32)(got).logits[0, 5:-1]
    chosen = l32.gather(1, got[0, 6:, None])[:, 0]
    assert (l32.max(1).values - chosen).max().item() < BF16_LOGIT_TOL
    # And equals transformers' bf16 greedy decode until the first fp32 near-tie.
    theirs = hf16.to(torch.bfloat16).generate(x, max_new_tokens=12, do_sample=False, eos_token_id=None,
                                              pad_token_id=0)
    top2 = l32.topk(2, dim=1).values
    ties = ((top2[:, 0] - top2[:, 1]) < BF16_LOGIT_TOL).nonzero()
    n = int(ties[0]) if len(ties) else 12
    assert n >= 3 and torch.equal(got[0, :6 + n], theirs[0, :6 + n]), n


@pytest.mark.slow
def test_cli_generate_compile(ckpt, capsys):
    from olmo2.cli import main
    args = ["generate", "--model", str(ckpt), "--prompt", "the cat", "--max-new-tokens", "6", "--temperature", "0"]
    assert main(args) == 0
    eager = capsys.readouterr().out
    assert main(args + ["--compile"]) == 0
    assert capsys.readouterr().out == eager
