"""Chat KV reuse: a conversation decoded through one kept `Decoder` (each turn prefills only
its new tokens) gives the same replies as re-prefilling the whole conversation every turn,
over several turns, across a history trim (cache rebuilt from the first changed token) and
`/reset`; and `olmo2 chat` reuses its cache that way (reused-token counts, same replies).
"""
from __future__ import annotations

import io
import sys

import pytest
import torch

from olmo2.config import ModelConfig
from olmo2.infer.decoder import Decoder
from olmo2.infer.generate import GenerationStats, stream_generate
from olmo2.model import Olmo2

USER_TURNS = ["hello there", "the cat sat on the mat", "and then what", "STOP here and there"]


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from olmo2.tokenizer import Tokenizer
    tk = HFTok(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(["hello world, the cat sat on the mat. STOP here and there, then what."] * 20, trainer)
    return Tokenizer(tk)


def model(tok, ctx: int) -> Olmo2:
    cfg = ModelConfig(vocab_size=320, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=ctx,
                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, init_std=0.2)
    torch.manual_seed(0)
    m = Olmo2(cfg).eval()
    m.reset_parameters()
    return m


def prompt_ids(tok, history, user):
    msgs = [{"role": "system", "content": "Be brief."}] + history + [{"role": "user", "content": user}]
    return tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True))


def reply(m, tok, ids, decoder=None, stats=None):
    return "".join(stream_generate(m, tok, ids, 24, temperature=0, eos_token_id=[], stop_strings=["<|user|>"],
                                   decoder=decoder, stats=stats))


@torch.inference_mode()
def test_reuse_equals_reprefill_over_turns_trim_and_reset(tok):
    # float64: the cached K/V of earlier turns were computed one token at a time, a fresh
    # prefill computes them in one matmul; in fp32 that ~1e-6 difference flips greedy
    # near-ties of a random model now and then. In float64 the replies must be identical.
    m = model(tok, ctx=512).double()
    dec = Decoder(m, 1, 0)
    history: list[dict] = []
    reused = []
    for turn, user in enumerate(USER_TURNS + ["/reset", "hello there", "and then what"]):
        if user == "/reset":
            history.clear()
            dec.reset()
            continue
        ids = prompt_ids(tok, history, user)
        if turn == 3:  # trim: drop the oldest exchange, as the chat does when the context is full
            del history[:2]
            ids = prompt_ids(tok, history, user)
        # The first next-token logits from the reused cache equal a fresh prefill's.
        fresh_logits = Decoder(m, 1, 0).start(torch.tensor([ids]))
        probe = Decoder(m, 1, 0)
        probe.cache, probe._held = dec.cache.grown(dec.capacity), list(dec.held_ids())  # a copy
        probe._alloc_masks(probe.capacity)
        assert torch.allclose(probe.start(torch.tensor([ids])), fresh_logits, atol=1e-9, rtol=0)
        stats = GenerationStats()
        got = reply(m, tok, ids, dec, stats)
        assert got == reply(m, tok, ids), f"turn {turn}"  # the whole conversation re-prefilled
        reused.append(stats.reused_tokens)
        history += [{"role": "user", "content": user}, {"role": "assistant", "content": got.strip()}]
    n_sys = len(prompt_ids(tok, [], "")) - 3  # roughly the system block: what a trim keeps
    assert reused[0] == 0
    assert reused[1] > 20 and reused[2] > reused[1]      # later turns reuse the conversation so far
    assert 0 < reused[3] < reused[2] and reused[3] >= n_sys // 2  # trimmed: rebuilt after the system block
    assert reused[4] == 0                                 # after /reset nothing is reused
    assert reused[5] > 0
    assert len({r for r in (reply(m, tok, prompt_ids(tok, [], u)) for u in USER_TURNS)}) > 1  # replies differ


def test_cli_chat_reuses_cache_and_matches_library(tok, tmp_path, capsys, monkeypatch):
    from olmo2.checkpoint import save_model
    from olmo2.cli import main
    m = model(tok, ctx=512)
    save_model(m, tmp_path / "m", tokenizer=tok)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(u + "\n" for u in USER_TURNS[:3])))
    assert main(["chat", "--model", str(tmp_path / "m"), "--max-new-tokens", "24", "--temperature", "0",
                 "--system", "Be brief.", "--verbose"]) == 0
    cap = capsys.readouterr()
    got = cap.out.split("\n")[:3]
    reused = [int(line.split(" reused")[0].split(", ")[-1]) for line in cap.err.splitlines() if "reused" in line]
    assert len(reused) == 3 and reused[0] == 0 and reused[1] > 0 and reused[2] > reused[1]
    # The CLI's replies are the library's chat through one kept Decoder (whose equality with
    # re-prefilling is the test above).
    history: list[dict] = []
    dec = Decoder(m, 1, 0)
    for user, line in zip(USER_TURNS[:3], got):
        ids = prompt_ids(tok, history, user)
        want = "".join(stream_generate(m, tok, ids, 24, temperature=0, eos_token_id=tok.eos_id,
                                       stop_strings=["<|user|>"], decoder=dec))
        assert line == want
        history += [{"role": "user", "content": user}, {"role": "assistant", "content": want.strip()}]
