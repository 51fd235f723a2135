"""`olmo2 rlvr` (GRPO) on a tiny model: the reward rises on a trivially learnable verifiable
task, resume after SIGKILL equals an uninterrupted run, bad lines are file:line errors.
(Advantages and the clipped objective against hand values: tests/test_prefopt_math.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sft_fixtures import tiny_base, write_jsonl

ENV = {**os.environ, "OLMO2_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
# The task: whatever the question, answer with the digit 7 (the verifier takes the last number).
PROMPTS = [{"prompt": q, "ground_truth": "7", "dataset": "arithmetic"}
           for q in ("What is the answer?", "Say a number.", "Hello there, how are you?", "Please add the numbers.")]
FAST = ["--set", "train.lr=1e-2", "--set", "rlvr.max_new_tokens=3", "--set", "rlvr.group_size=8",
        "--set", "train.global_batch_size=32", "--set", "train.micro_batch_size=16"]


def _rlvr(tmp_path: Path, base, data, out, *extra, env=ENV):
    cmd = [sys.executable, "-m", "olmo2", "rlvr", "--model", str(base), "--data", str(data), "--out", str(out),
           "--recipe", "tiny_rlvr", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


def test_rollout_rows_layout():
    from olmo2.post.rlvr import rollout_rows
    ids, lab = rollout_rows([[1, 2], [3]], [[7, 9], [8]], pad=0)
    assert ids.tolist() == [[1, 2, 7, 9], [3, 8, 0, 0]]
    assert lab.tolist() == [[-100, -100, 7, 9], [-100, 8, -100, -100]]


@pytest.mark.slow  # 40 GRPO steps: 10 min on the 2 shared cores at load 23 (passed there)
def test_reward_rises_on_a_learnable_task(tmp_path):
    from olmo2.post.rlvr import run_rlvr
    base = tiny_base(tmp_path / "base")
    data = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    overrides = [FAST[i + 1] for i in range(0, len(FAST), 2)] + ["train.max_steps=40", "train.eval_every=40",
                                                                  "train.save_every=None", "rlvr.num_epochs=1",
                                                                  "rlvr.num_mini_batches=1"]
    res = run_rlvr(str(base), [str(data)], tmp_path / "run", recipe="tiny_rlvr", overrides=overrides,
                   eval_sources=[str(data)])
    rec = [json.loads(x) for x in res.metrics_path.read_text().splitlines()]
    steps = [r for r in rec if "reward" in r]
    assert len(steps) == 40
    for k in ("reward", "kl", "clip_frac", "response_len", "pg_loss"):
        assert all(k in r for r in steps), k
    # at the start about 1 completion in 30 says 7 (reward 10 each): mean reward ≈ 0.3
    first = sum(r["reward"] for r in steps[:10]) / 10
    last = sum(r["reward"] for r in steps[-10:]) / 10
    assert last > first + 1.0, [round(r["reward"], 2) for r in steps]
    assert steps[0]["kl"] < 1e-6 < steps[-1]["kl"]  # starts at the reference, then moves away
    evals = [r for r in rec if "eval/accuracy" in r]
    assert evals and 0.0 <= evals[-1]["eval/accuracy"] <= 1.0, evals


def test_rlvr_resumes_after_sigkill_like_an_uninterrupted_run(tmp_path):
    # two PPO epochs per rollout: checkpoints land on rollout boundaries (save_every 2), so the
    # resumed run samples rollout 1 from the same policy the uninterrupted one did
    base = tiny_base(tmp_path / "base")
    data = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    extra = [*FAST, "--set", "train.max_steps=4", "--set", "train.save_every=2", "--set", "train.eval_every=None",
             "--set", "rlvr.num_epochs=2", "--set", "rlvr.num_mini_batches=1"]
    full = _rlvr(tmp_path, base, data, tmp_path / "full", *extra)
    assert full.returncode == 0, full.stderr
    killed = _rlvr(tmp_path, base, data, tmp_path / "resumed", *extra,
                   env={**ENV, "OLMO2_TEST_SIGKILL_AFTER_STEP": "2"})
    assert killed.returncode == -9
    again = _rlvr(tmp_path, base, data, tmp_path / "resumed", *extra)
    assert again.returncode == 0 and "resumed from" in again.stderr, again.stderr
    from olmo2.checkpoint import load_model
    a, b = load_model(tmp_path / "full" / "hf"), load_model(tmp_path / "resumed" / "hf")
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


def test_bad_prompt_lines_are_file_line_errors(tmp_path):
    from olmo2.errors import DataError
    from olmo2.post.rlvr import read_prompts
    data = write_jsonl(tmp_path / "p.jsonl", [json.dumps(PROMPTS[0]), '{"prompt": "x"}',
                                              '{"prompt": "x", "ground_truth": "seven"}', "{"])
    try:
        read_prompts([str(data)])
    except DataError as e:
        msg = str(e)
    else:
        raise AssertionError("no error")
    assert msg.startswith(f"{data}:2:") and "2 more bad lines" in msg, msg


def _rollout_data(tmp_path: Path, **cfg):
    """A RolloutData over PROMPTS on a tiny random policy (frozen copy as reference)."""
    import copy

    from olmo2.checkpoint import load_model
    from olmo2.post.rlvr import RLVRConfig, RolloutData, encode_prompts, read_prompts
    from olmo2.tokenizer import Tokenizer
    base = tiny_base(tmp_path / "base")
    tok = Tokenizer.from_pretrained(base)
    c = RLVRConfig(**{"group_size": 2, "max_new_tokens": 4, "max_prompt_tokens": 64, **cfg})
    ids, prompts, _ = encode_prompts(tok, read_prompts([str(write_jsonl(tmp_path / "p.jsonl", PROMPTS))]), c)
    policy = load_model(base)
    data = RolloutData(tok, ids, prompts, c, global_batch_size=4, seed=1, ref_model=copy.deepcopy(policy),
                       chunk_tokens=None)
    data.bind(policy)
    return data


def test_ppo_epochs_reuse_one_rollout_in_shuffled_minibatches(tmp_path):
    # 2 epochs × 2 minibatches of 4 completions: one rollout of 4 prompts × 2 feeds 4 steps
    data = _rollout_data(tmp_path, num_epochs=2, num_mini_batches=2)
    calls = []
    real = data.rollout
    data.rollout = lambda r: calls.append(r) or real(r)
    it = iter(data)
    batches = [next(it) for _ in range(5)]
    assert calls == [0, 1]                                     # sampled once per 4 optimizer steps
    full = real(0)                                             # the same seeded rollout, recomputed
    for e in range(2):                                         # each epoch covers the rollout once
        rows = torch.cat([data.minibatch_rows(0, 2 * e + j) for j in range(2)])
        assert sorted(rows.tolist()) == list(range(8))
    assert not torch.equal(data.minibatch_rows(0, 0), data.minibatch_rows(0, 2))  # reshuffled per epoch
    for k, b in enumerate(batches[:4]):
        rows = data.minibatch_rows(0, k)
        T = b["input_ids"].shape[1]
        for key in ("input_ids", "labels", "old_logps", "ref_logps"):
            assert torch.equal(b[key], full[key][rows][:, :T]), (k, key)
        assert (full["labels"][rows][:, T:] == -100).all()     # only padding was trimmed
        for key in ("advantages", "reward", "response_len"):
            assert torch.equal(b[key], full[key][rows]), (k, key)
    assert data.state_dict() == {"step": 5}


def test_save_every_inside_a_rollout_is_refused(tmp_path):
    from olmo2.errors import ConfigError
    from olmo2.post.rlvr import run_rlvr
    base = tiny_base(tmp_path / "base")
    data = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    with pytest.raises(ConfigError, match="save_every 3 must be a multiple .* = 2"):
        run_rlvr(str(base), [str(data)], tmp_path / "run", overrides=["rlvr.num_epochs=2", "rlvr.num_mini_batches=1",
                                                                  "train.save_every=3"])


def test_clip_acts_from_the_second_update_on_a_rollout(tmp_path):
    # one rollout, 4 PPO epochs at a high LR: step 1 has ρ = 1 (no clipping, KL 0); later
    # steps see the moved policy, so some tokens' ratios leave [0.8, 1.2] and are clipped
    from olmo2.post.rlvr import run_rlvr
    base = tiny_base(tmp_path / "base")
    data = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    overrides = [FAST[i + 1] for i in range(0, len(FAST), 2)] + [
        "rlvr.num_epochs=4", "rlvr.num_mini_batches=1", "train.max_steps=4", "train.save_every=None", "train.eval_every=None",
        "rlvr.group_size=16", "train.global_batch_size=64"]
    res = run_rlvr(str(base), [str(data)], tmp_path / "run", overrides=overrides, export=False)
    steps = [json.loads(x) for x in res.metrics_path.read_text().splitlines() if '"clip_frac"' in x]
    assert len(steps) == 4
    assert steps[0]["clip_frac"] == 0.0 and steps[0]["kl"] < 1e-9
    assert steps[0]["reward"] > 0          # some completion said 7, so the advantages are not all 0
    assert all(s["reward"] == steps[0]["reward"] for s in steps)   # the same completions all along
    assert max(s["clip_frac"] for s in steps[1:]) > 0.0, [s["clip_frac"] for s in steps]
