"""The chain's measures (olmo2.post.chat_eval) and its PASS/FAIL logic (olmo2.post.chain) on a
tiny random model with a BPE trained in the test: log-likelihoods against a plain forward,
EOS/turn-tag detection against the generated ids, intervals against hand-computed means."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from olmo2.config import preset
from olmo2.data.bpe import train_bpe
from olmo2.model import Olmo2
from olmo2.post.chain import ChainSpec, chain_section, stage_checks
from olmo2.post.chat_eval import (chat_arithmetic, mean_ci, paired_diff, preference_accuracy, preference_logps,
                                  reward_margins, sampled_reward)
from olmo2.post.demo_data import arith_dpo, phrasings, solution
from olmo2.tokenizer import Tokenizer, render_chat

KEYS = [("add", 1, 2, 3), ("sub", 4, 5, 2), ("add", 2, 2, 2), ("sub", 3, 3, 1)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    texts = [render_chat([{"role": "user", "content": q}, {"role": "assistant", "content": solution(k)}],
                         add_generation_prompt=False, add_bos=True) for k in KEYS for q in phrasings(k)] * 20
    tok = Tokenizer.from_file(train_bpe(texts, 300, out_path=d / "tokenizer.json"))
    cfg = preset("tiny-demo").replace(vocab_size=((tok.vocab_size + 63) // 64) * 64, d_model=32, n_layers=1,
                                      n_heads=2, n_kv_heads=2, d_ff=64, eos_token_id=tok.eos_id,
                                      pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    return Olmo2(cfg).eval(), tok


def _problems():
    return [{"question": phrasings(k)[0], "answer": (k[1] + k[2] + k[3]) if k[0] == "add" else k[1] + k[2] - k[3]}
            for k in KEYS]


def test_preference_logps_are_dpo_norm_on_the_whole_rendered_chat(tiny):
    # Each side is the WHOLE conversation rendered and tokenized in one piece (as SFT/DPO
    # train on it), scored by a plain forward over the reply tokens + closing EOS, averaged.
    model, tok = tiny
    import random
    pairs = arith_dpo(KEYS, 6, random.Random(0))
    lp = preference_logps(model, tok, pairs, batch_size=4)
    for p, (c, r) in zip(pairs, lp):
        for msgs, got in ((p["chosen"], c), (p["rejected"], r)):
            prompt = render_chat(msgs[:-1], add_generation_prompt=True, add_bos=True)
            full = tok.encode(render_chat(msgs, add_generation_prompt=False, add_bos=True))
            n_prompt = len(tok.encode(prompt))
            assert full[:n_prompt] == tok.encode(prompt)       # the prompt tokens are a prefix here
            reply = full[n_prompt:]
            assert reply[-1] == tok.eos_id and tok.decode(reply[:-1]) == msgs[-1]["content"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([full])).double(), -1)[0]
            want = sum(float(logp[i - 1, full[i]]) for i in range(n_prompt, len(full))) / len(reply)
            assert got == pytest.approx(want, abs=1e-5)
    acc = preference_accuracy(lp)
    assert acc == [int(c > r) for c, r in lp]
    assert reward_margins(lp, lp, 5.0) == [0.0] * len(lp)   # the reference itself has margin 0


def test_the_eval_split_rule_would_drop_the_newline_before_the_reply(tiny):
    # Why preference_logps does not use `olmo2 eval`'s requests: the rule moves the context's
    # trailing "\n" into the continuation, and with a BPE that merges ">\n" the scored ids lose it.
    from olmo2.eval.scoring import encode_pair
    model, tok = tiny
    prompt = render_chat([{"role": "user", "content": phrasings(KEYS[0])[0]}], add_generation_prompt=True,
                         add_bos=True)
    ctx, cont = encode_pair(tok.encode, prompt, solution(KEYS[0]) + "<|endoftext|>")
    whole = tok.encode(prompt + solution(KEYS[0]) + "<|endoftext|>")
    if tok.encode(prompt)[-1] == tok.encode(prompt.rstrip("\n"))[-1]:
        pytest.skip("this BPE does not merge the newline into the tag's last token")
    assert ctx + cont != whole and tok.decode(ctx + cont) == prompt.rstrip("\n") + solution(KEYS[0]) + "<|endoftext|>"


def test_chat_arithmetic_reads_eos_and_turn_tags_from_the_ids(tiny, monkeypatch):
    model, tok = tiny
    probs = _problems()
    r = chat_arithmetic(model, tok, probs, max_new_tokens=12)
    assert r.n == 4 and len(r.replies) == 4
    # an untrained model: whatever it says, the flags must agree with its own greedy ids
    from olmo2.infer.generate import generate
    for p, text, eos, clean in zip(probs, r.replies, r.eos, r.clean):
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": p["question"]}], add_bos=True))
        out = generate(model, [ids], max_new_tokens=12, temperature=0, eos_token_id=tok.eos_id)[0, len(ids):].tolist()
        assert eos == int(tok.eos_id in out)
        assert clean == int(eos and "answer is" in text and not any(t in text for t in ("<|user|>", "<|assistant|>")))
    # a model that replies with the right worked answer and EOS is correct and clean; one that
    # invents the next turn is neither clean nor (its last number being the invented turn's) correct
    import olmo2.post.chat_eval as ce
    monkeypatch.setattr(ce, "_replies", lambda m, t, qs, *a: [(solution(k), True) for k in KEYS])
    good = chat_arithmetic(model, tok, probs)
    assert good.hits == [1, 1, 1, 1] and good.clean == [1, 1, 1, 1]
    monkeypatch.setattr(ce, "_replies", lambda m, t, qs, *a: [
        (solution(k) + "\n<|user|>\nWhat is 9 + 9 + 9?\n<|assistant|>\n9 + 9 = 18. 18 + 9 = 27.", True) for k in KEYS])
    bad = chat_arithmetic(model, tok, probs)
    assert bad.hits == [0, 0, 0, 0] and bad.clean == [0, 0, 0, 0]
    monkeypatch.setattr(ce, "_replies", lambda m, t, qs, *a: [("3. 3. 3.", True), (solution(KEYS[1]), False),
                                                               (solution(KEYS[2]), True), ("5", True)])
    mixed = chat_arithmetic(model, tok, probs)   # no answer stated / no EOS / clean / right but unformatted
    assert mixed.clean == [0, 0, 1, 0] and mixed.hits == [0, 1, 1, 1] and mixed.eos == [1, 0, 1, 1]


def test_sampled_reward_is_seeded(tiny):
    model, tok = tiny
    a = sampled_reward(model, tok, _problems(), samples=2, seed=3, max_new_tokens=6)
    b = sampled_reward(model, tok, _problems(), samples=2, seed=3, max_new_tokens=6)
    assert a == b and len(a) == 4 and all(x in (0.0, 5.0, 10.0) for x in a)


def test_intervals_against_hand_values():
    est, lo, hi = mean_ci([1.0, 0.0, 1.0, 1.0], n_boot=500)
    assert est == 0.75 and 0 <= lo <= est <= hi <= 1
    est, lo, hi = paired_diff([1, 1, 1, 0], [0, 1, 0, 0], n_boot=500)
    assert est == 0.5 and lo <= 0.5 <= hi
    with pytest.raises(ValueError):
        paired_diff([1], [1, 0])


def _evals(hits, clean, pref, reward):
    n = len(hits)
    return {"hits": hits, "clean": clean, "pref_logps": pref, "reward": reward,
            "arith": {"n": n}}


def test_stage_checks_pass_and_fail_from_the_figures():
    n = 200
    base = _evals([0] * n, [0] * n, [(-2.0, -1.0)] * n, [0.0] * n)
    sft = _evals([1] * (n // 2) + [0] * (n // 2), [1] * n, [(-1.0, -1.5)] * (n // 2) + [(-2.0, -1.0)] * (n // 2),
                 [2.0] * n)
    dpo = _evals(sft["hits"], sft["clean"], [(-0.5, -3.0)] * n, [2.0] * n)
    rlvr = _evals(sft["hits"], sft["clean"], dpo["pref_logps"], [2.0] * n)      # no reward gain
    checks = stage_checks({"base": base, "sft": sft, "dpo": dpo, "rlvr": rlvr}, ChainSpec(n_boot=300))
    assert [c.stage for c in checks] == ["SFT", "SFT", "DPO", "DPO", "RLVR"]
    assert [c.passed for c in checks] == [True, True, True, True, False], checks
    # the DPO margin: β·[(c − c_ref) − (r − r_ref)] with SFT as the reference, hand-computed
    want = 5.0 * ((-0.5 + 1.0) - (-3.0 + 1.5)) * 0.5 + 5.0 * ((-0.5 + 2.0) - (-3.0 + 1.0)) * 0.5
    assert checks[3].figure.startswith(f"{want:+.3f}")
    text = chain_section({"base": base, "sft": sft, "dpo": dpo, "rlvr": rlvr}, checks, ChainSpec(n_boot=300), ["a note"])
    assert "| RLVR |" in text and "FAIL" in text and text.count("PASS") == 4 and "- a note" in text


def test_constraint_checks_use_every_pair_and_the_reward_mix():
    """SFT gets a constraint-following check; DPO's accuracy and margin are over arithmetic + constraint
    pairs together (the arithmetic pairs alone do not move here, the constraint pairs do); RLVR's reward is
    the whole prompt mix, and the table shows each part apart."""
    n = 100
    def ev(hits, follow, lp_a, lp_c, reward):
        return {"hits": hits, "clean": hits, "follow": follow, "follow_by_kind": {"lowercase": sum(follow) / n},
                "pref_logps": lp_a, "pref_logps_c": lp_c, "reward": reward, "reward_n_arith": n // 2, "arith": {"n": n}}
    flat = [(-1.0, -1.0 + 0.1)] * n                      # arithmetic pairs: chosen below rejected, unchanged
    base = ev([0] * n, [0] * n, flat, [(-2.0, -1.0)] * n, [0.0] * n)
    sft = ev([1] * n, [1] * (n // 2) + [0] * (n // 2), flat, [(-2.0, -1.0)] * n, [1.0] * n)
    dpo = ev([1] * n, sft["follow"], flat, [(-0.5, -3.0)] * n, [1.0] * n)
    rlvr = ev([1] * n, sft["follow"], flat, dpo["pref_logps_c"], [1.0] * (n // 2) + [6.0] * (n // 2))
    evals = {"base": base, "sft": sft, "dpo": dpo, "rlvr": rlvr}
    checks = stage_checks(evals, ChainSpec(n_boot=300))
    assert [c.claim.split()[0] for c in checks if c.stage == "SFT"] == ["chat-format", "held-out", "held-out"]
    assert "constraint following" in checks[2].claim
    assert all(c.passed for c in checks), checks
    dpo_acc = next(c for c in checks if c.stage == "DPO" and "accuracy" in c.claim)
    assert dpo_acc.figure.startswith("+50.0")             # 0 of n arithmetic + n of n constraint pairs flip: +50 points
    margin = next(c for c in checks if "margin" in c.claim)
    want = 5.0 * (((-1.0 + 1.0) - (-0.9 + 0.9)) * n + ((-0.5 + 2.0) - (-3.0 + 1.0)) * n) / (2 * n)
    assert margin.figure.startswith(f"{want:+.3f}")
    assert checks[-1].figure.startswith("+2.50")           # (0 × 50 + 5 × 50) / 100
    text = chain_section(evals, checks, ChainSpec(n_boot=300), [])
    row = next(line for line in text.splitlines() if line.startswith("| rlvr |"))
    assert "| 0.0% [" in row and "| 100.0% [" in row and "| 50.0% [" in row       # arithmetic / constraint / all pairs
    assert "| 1.00 [1.00, 1.00] | 6.00 [6.00, 6.00] |" in row                      # reward by part
    assert "constraint following by kind" in text


def test_replicate_from_run_errors_are_one_line(tmp_path):
    olmo2 = [sys.executable, "-m", "olmo2"]
    r = subprocess.run(olmo2 + ["replicate", "--through", "instruct", "--from-run", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: --from-run") and "soup" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(olmo2 + ["replicate", "--from-run", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--through" in r.stderr


def test_a_missing_stage_entry_point_is_a_one_line_error():
    from olmo2.errors import Olmo2Error
    from olmo2.post.chain import _entry
    with pytest.raises(Olmo2Error, match=r"needs olmo2\.post\.nope\.run_x.*--through sft"):
        _entry("olmo2.post.nope", "run_x", "dpo")
    assert _entry("olmo2.post.chat_eval", "paired_diff", "sft") is paired_diff


def test_chain_through_sft_end_to_end(tiny, tmp_path):
    """run_chain on a test-sized base: data, leak check, the real `run_sft`, every model scored,
    the SFT checks computed, report.md and chain.json written; a rerun reuses the stage."""
    import json
    from olmo2.checkpoint import save_model
    from olmo2.post.chain import SECTION, run_chain
    from olmo2.post.demo_data import InstructDataSpec
    model, tok = tiny
    base = save_model(model, tmp_path / "base", tokenizer=tok)
    spec = ChainSpec(data=InstructDataSpec(sft_arith=200, sft_qa=0, dpo_pairs=6, rlvr_prompts=6, heldout_dpo=8,
                                           sft_constraint=20, dpo_constraint=4, rlvr_constraint=4, heldout_constraint=6,
                                           heldout_dpo_constraint=6),
                     heldout=8, pref_pairs=8, reward_prompts=4, reward_samples=2, max_new_tokens=8, n_boot=100,
                     constraint_heldout=6, constraint_pairs=6, reward_prompts_constraint=3,
                     overrides={"sft": ("sft.epochs=1", "train.seq_len=128", "train.progress=false")})
    res = run_chain(base, tmp_path / "run", spec, through="sft")
    assert list(res.models) == ["base", "sft"] and (res.models["sft"] / "config.json").exists()
    assert [c.stage for c in res.checks] == ["SFT", "SFT", "SFT"]
    assert len(res.evals["sft"]["follow"]) == 6 and len(res.evals["sft"]["pref_logps_c"]) == 6
    assert len(res.evals["sft"]["reward"]) == 4 + 3 and res.evals["sft"]["reward_n_arith"] == 4
    report = (tmp_path / "run" / "report.md").read_text()
    assert SECTION in report and "| sft |" in report and ("PASS" in report or "FAIL" in report)
    saved = json.loads((tmp_path / "run" / "post" / "chain.json").read_text())
    assert set(saved["evals"]) == {"base", "sft"} and saved["evals"]["sft"]["arith"]["n"] == 8
    assert set(saved["evals"]["sft"]["reward_mean_by_part"]) == {"arithmetic", "constrained"}
    again = run_chain(base, tmp_path / "run", spec, through="sft")      # reuses sft/hf, replaces the section
    assert (tmp_path / "run" / "report.md").read_text().count(SECTION) == 1 and again.models == res.models
