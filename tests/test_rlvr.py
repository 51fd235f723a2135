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
                                                                  "train.save_every=None"]
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
    base = tiny_base(tmp_path / "base")
    data = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    extra = [*FAST, "--set", "train.max_steps=4", "--set", "train.save_every=1", "--set", "train.eval_every=None"]
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
