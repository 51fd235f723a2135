"""SFT (olmo2/post): assistant-only labels token by token on the real dolma2 tokenizer,
bad JSONL lines as file:line, packing and truncation counts, the epoch/warmup schedule,
open-instruct's reduce_loss=mean, and `olmo2 sft` end to end with resume after SIGKILL."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from olmo2.errors import DataError
from olmo2.post.chat_data import PackedSFTData, encode_example, pack, read_messages
from olmo2.post.recipe import SFTConfig, apply_post_overrides, get_post_recipe, schedule_for
from olmo2.train.loss import IGNORE_INDEX
from sft_fixtures import chats, tiny_base, write_jsonl

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# ---- labels ------------------------------------------------------------------------------
def test_assistant_labels_token_by_token_on_dolma2(dolma2_tokenizer_path):
    from olmo2.tokenizer import Tokenizer
    tok = Tokenizer.from_file(dolma2_tokenizer_path)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    enc = encode_example(tok, msgs, add_bos=True)
    # ids from the published dolma2 vectors (facts §2): "<|endoftext|><|user|>\nHi\n<|assistant|>\n"
    # and "Hello" → 9906; the assistant turn ends with <|endoftext|> = 100257
    prompt = [100257, 27, 91, 882, 91, 397, 13347, 198, 27, 91, 78191, 91, 397]
    assert enc.ids == prompt + [9906, 100257]
    assert enc.labels == [IGNORE_INDEX] * len(prompt) + [9906, 100257]
    # without BOS the leading 100257 goes, nothing else changes
    enc = encode_example(tok, msgs, add_bos=False)
    assert enc.ids == prompt[1:] + [9906, 100257] and enc.labels == [IGNORE_INDEX] * 12 + [9906, 100257]


def test_multi_turn_labels_cover_each_assistant_turn_only(dolma2_tokenizer_path):
    from olmo2.tokenizer import Tokenizer
    tok = Tokenizer.from_file(dolma2_tokenizer_path)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello world"}, {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Hello"}]
    enc = encode_example(tok, msgs, add_bos=True)
    e = tok.encode
    # the conversation built piece by piece; the pieces must tokenize to the full string's ids
    pieces = [(e("<|endoftext|><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"), False),
              (e("Hello world") + [tok.eos_id], True),
              (e("\n<|user|>\nAgain\n<|assistant|>\n"), False),
              (e("Hello") + [tok.eos_id], True)]
    assert enc.ids == [t for p, _ in pieces for t in p]
    want = [t if keep else IGNORE_INDEX for p, keep in pieces for t in p]
    assert enc.labels == want
    assert [tok.decode([t]) for t in enc.labels if t != IGNORE_INDEX] == ["Hello", " world", "<|endoftext|>",
                                                                          "Hello", "<|endoftext|>"]


# ---- reading -----------------------------------------------------------------------------
def test_bad_jsonl_lines_are_reported_as_file_line(tmp_path):
    good = chats(2)
    f = write_jsonl(tmp_path / "d.jsonl", [good[0], "{not json", {"messages": [{"role": "bot", "content": "x"}]},
                                           "", {"messages": [{"role": "user", "content": "no answer"}]}, good[1]])
    with pytest.raises(DataError) as e:
        read_messages([str(f)])
    msg = str(e.value)
    assert msg.startswith(f"{f}:2: not valid JSON") and "and 2 more bad lines" in msg and "\n" not in msg
    for line, what in ((3, "messages[0].role 'bot'"), (5, "no assistant turn")):
        f2 = write_jsonl(tmp_path / f"e{line}.jsonl", [good[0]] * (line - 1) + [
            json.loads(f.read_text().splitlines()[line - 1])])
        with pytest.raises(DataError, match="^" + re.escape(f"{f2}:{line}: {what}")):
            read_messages([str(f2)])
    assert len(read_messages([str(write_jsonl(tmp_path / "ok.jsonl", good))])) == 2


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_messages([str(tmp_path / "nope.jsonl")])


# ---- packing -----------------------------------------------------------------------------
def _enc(n_tokens, n_prompt):
    from olmo2.post.chat_data import Encoded
    ids = list(range(10, 10 + n_tokens))
    return Encoded(ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:])


def test_pack_counts_truncation_and_drops_examples_without_labels():
    exs = [_enc(5, 2), _enc(7, 3), _enc(20, 4), _enc(12, 12), _enc(3, 1)]   # 20 > 16: cut; 12/12: no labels
    rows, st = pack(exs, seq_len=16, pad_id=0, seed=0)
    assert (st.examples, st.truncated, st.dropped_no_labels) == (5, 1, 1)
    assert st.tokens == 5 + 7 + 16 + 3 == (rows.doc_ids >= 0).sum()
    for r in range(st.rows):
        for d in np.unique(rows.doc_ids[r][rows.doc_ids[r] >= 0]):
            at = np.flatnonzero(rows.doc_ids[r] == d)
            assert (rows.position_ids[r, at] == np.arange(len(at))).all()     # positions restart per doc
            assert rows.labels[r, at[0]] == IGNORE_INDEX                      # nothing crosses docs
    assert st.label_tokens == int((rows.labels[:, 1:] != IGNORE_INDEX).sum())
    # every kept example's labels survive packing (minus its first token, never a target)
    assert st.label_tokens == 3 + 4 + 12 + 2
    rows1, st1 = pack(exs, seq_len=16, pad_id=0, seed=0, packing=False)
    assert st1.rows == 4 and st.rows < 4


def test_data_source_epochs_batches_and_resume_state():
    rows, _ = pack([_enc(6, 2) for _ in range(10)], seq_len=8, pad_id=0, seed=0, packing=False)
    d = PackedSFTData(rows, global_batch_size=4, epochs=2, seed=3)
    assert d.steps_per_epoch == 3 and d.total_steps == 6
    batches = list(d)
    assert len(batches) == 6 and all(b["input_ids"].shape == (4, 8) for b in batches)
    # the 3rd batch of each epoch holds 2 real rows and 2 empty ones (no labels)
    assert (batches[2]["labels"][2:] == IGNORE_INDEX).all() and (batches[2]["labels"][:2] != IGNORE_INDEX).any()
    d2 = PackedSFTData(rows, global_batch_size=4, epochs=2, seed=3)
    it = iter(d2)
    next(it), next(it)
    st = d2.state_dict()
    d3 = PackedSFTData(rows, global_batch_size=4, epochs=2, seed=3)
    d3.load_state_dict(st)
    for a, b in zip(list(d3), batches[2:]):
        assert torch.equal(a["input_ids"], b["input_ids"])
    # two ranks get disjoint halves of the same global batches
    r0 = list(PackedSFTData(rows, 4, 2, seed=3, rank=0, world=2))
    r1 = list(PackedSFTData(rows, 4, 2, seed=3, rank=1, world=2))
    assert torch.equal(torch.cat([r0[0]["input_ids"][:1], r1[0]["input_ids"][:1]]), batches[0]["input_ids"][:2])


# ---- recipe and schedule --------------------------------------------------------------------
def test_olmo2_1b_sft_recipe_and_its_schedule():
    r = get_post_recipe("olmo2_1b_sft")
    t, s = r.train, r.stage
    assert (t.lr, t.global_batch_size, t.weight_decay, t.seq_len) == (3e-5, 128, 0.0, 4096)
    assert (s.epochs, s.warmup_ratio, s.reduce_loss, s.add_bos) == (2, 0.03, "mean", True)
    t2 = schedule_for(t, total_steps=1000, warmup_ratio=s.warmup_ratio, row_tokens=4096)
    from olmo2.train.schedule import build_schedule
    sch, step = build_schedule(t2), 128 * 4096
    assert t2.max_steps == 1000 and t2.warmup_tokens == 30 * step
    assert sch.lr(15 * step) == pytest.approx(3e-5 / 2)     # mid-warmup
    assert sch.lr(30 * step) == pytest.approx(3e-5)         # peak after 3% of the steps
    assert sch.lr(515 * step) == pytest.approx(3e-5 / 2)    # linear decay, half way
    assert sch.lr(1000 * step) == 0.0                       # 0 at the last step
    r2 = apply_post_overrides(r, ["sft.epochs=1", "train.lr=1e-5"])
    assert r2.stage.epochs == 1 and r2.train.lr == 1e-5
    from olmo2.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown section 'model'"):
        apply_post_overrides(r, ["model.d_model=3"])
    with pytest.raises(ConfigError, match="reduce_loss"):
        SFTConfig(reduce_loss="avg")


def test_reduce_loss_mean_is_the_mean_of_micro_batch_means():
    """open-instruct reduce_loss=mean: each micro-batch's own token mean, averaged."""
    from olmo2.config import preset
    from olmo2.model import Olmo2
    from olmo2.post.sft import SFTObjective
    from olmo2.train.config import TrainConfig
    torch.manual_seed(0)
    m = Olmo2(preset("tiny").replace(vocab_size=50)).double()
    ids = torch.randint(0, 50, (4, 10))
    labels = ids.clone()
    labels[0, :7] = IGNORE_INDEX            # micro-batch 0: rows 0-1 with unequal token counts
    labels[3, :2] = IGNORE_INDEX
    cfg = TrainConfig(max_steps=1, z_loss_coeff=0.0, loss_chunk_tokens=None)
    obj = SFTObjective("mean", micro_batch_size=2)
    batch = {"input_ids": ids, "labels": labels}
    assert float(obj.normaliser(batch)) == 2
    got = sum(float(obj.micro_batch(m, {k: v[i:i + 2] for k, v in batch.items()}, cfg,
                                    torch.autocast("cpu", enabled=False))[0]) for i in (0, 2)) / 2
    logp = torch.log_softmax(m(ids)[:, :-1], -1)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    keep = labels[:, 1:] != IGNORE_INDEX
    means = [float(nll[i:i + 2][keep[i:i + 2]].mean()) for i in (0, 2)]
    assert abs(got - sum(means) / 2) < 1e-10
    summed = SFTObjective("sum")
    assert float(summed.normaliser(batch)) == int(keep.sum())


# ---- end to end ---------------------------------------------------------------------------
def _sft(tmp, base, data, out, *extra, env=ENV):
    return subprocess.run([sys.executable, "-m", "olmo2", "sft", "--model", str(base), "--data", str(data),
                           "--out", str(out), "--set", "train.seq_len=128", "--set", "train.lr=1e-2", "--set", "train.global_batch_size=4",
                           "--set", "train.micro_batch_size=2", "--set", "train.save_every=2",
                           "--set", "train.deterministic=true", "--set", "train.progress=false", *extra],
                          capture_output=True, text=True, env=env, cwd=tmp)


@pytest.mark.slow
def test_sft_cli_learns_exports_and_resumes_after_sigkill(tmp_path):
    base = tiny_base(tmp_path / "base")
    data = write_jsonl(tmp_path / "chats.jsonl", chats(24))
    full = _sft(tmp_path, base, data, tmp_path / "full", "--set", "sft.epochs=3")
    assert full.returncode == 0, full.stderr
    assert "examples →" in full.stderr and "truncated 0" in full.stderr
    killed = _sft(tmp_path, base, data, tmp_path / "resumed", "--set", "sft.epochs=3",
                  env={**ENV, "OLMO2_TEST_SIGKILL_AFTER_STEP": "3"})
    assert killed.returncode == -9
    again = _sft(tmp_path, base, data, tmp_path / "resumed", "--set", "sft.epochs=3")
    assert again.returncode == 0 and "resumed from" in again.stderr, again.stderr
    from olmo2.checkpoint import load_model
    a, b = load_model(tmp_path / "full" / "hf"), load_model(tmp_path / "resumed" / "hf")
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    rec = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rec[-1]["loss"] < rec[0]["loss"] - 0.5, [r["loss"] for r in rec]
    recipe = json.loads((tmp_path / "full" / "recipe.json").read_text())
    assert recipe["pack"]["examples"] == 24 and recipe["train"]["max_steps"] == len(rec)


SMALL = ["train.seq_len=128", "train.global_batch_size=4", "train.micro_batch_size=2", "train.save_every=1000",
         "train.progress=false", "train.lr=1e-2"]


def test_run_sft_in_process_learns_and_exports(tmp_path):
    """The fast hermetic version of the CLI test: 4 epochs on 24 chats, then RUN/hf loads."""
    from olmo2.checkpoint import load_model
    from olmo2.post.sft import run_sft
    base = tiny_base(tmp_path / "base")
    data = write_jsonl(tmp_path / "chats.jsonl", chats(24))
    res = run_sft(str(base), [str(data)], tmp_path / "run", recipe="tiny_sft", overrides=SMALL + ["sft.epochs=4"])
    assert res.stats.examples == 24 and res.stats.truncated == 0
    assert res.step == 4 * -(-res.stats.rows // 4)
    assert np.mean(res.losses[-2:]) < res.losses[0] - 1.0, res.losses     # seen: 5.73 → 2.83
    m = load_model(res.hf_dir)
    assert (res.hf_dir / "tokenizer.json").exists() and (res.hf_dir / "README.md").exists()
    assert m.config == load_model(base).config


def test_run_sft_with_lora_exports_merged_weights_and_refuses_another_rank(tmp_path):
    from olmo2.checkpoint import load_model
    from olmo2.errors import ConfigError
    from olmo2.post.lora import LoRAConfig
    from olmo2.post.sft import run_sft
    base = tiny_base(tmp_path / "base")
    data = write_jsonl(tmp_path / "chats.jsonl", chats(8))
    res = run_sft(str(base), [str(data)], tmp_path / "run", overrides=SMALL + ["sft.epochs=1"],
                  lora=LoRAConfig(r=2))
    b, m = load_model(base).state_dict(), load_model(res.hf_dir).state_dict()
    assert set(b) == set(m)                                     # a plain HF checkpoint, no adapter keys
    changed = {k for k in b if not torch.equal(b[k], m[k])}
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj") for k in changed)   # only adapted weights move
    with pytest.raises(ConfigError, match="started with lora"):
        run_sft(str(base), [str(data)], tmp_path / "run", overrides=SMALL + ["sft.epochs=2"], lora=LoRAConfig(r=4))
