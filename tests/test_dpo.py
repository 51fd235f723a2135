"""`olmo2 dpo` end to end on a tiny model: pairs data, the cached frozen reference, learning,
resume after SIGKILL, bad lines as file:line. (The loss maths: tests/test_prefopt_math.py.)"""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sft_fixtures import tiny_base, write_jsonl

ENV = {**os.environ, "OLMO2_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
# 16 pairs / 8 per step × 4 epochs = 8 steps; a checkpoint every 2 so a kill after step 3 resumes at 2
RUN = ["--set", "dpo.epochs=4", "--set", "train.lr=1e-2", "--set", "train.save_every=2"]


def pairs(n: int = 16, seed: int = 0) -> list[dict]:
    """Arithmetic prompts: the right sum is chosen, an off-by-some sum rejected."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = r.randint(1, 9), r.randint(1, 9)
        user = {"role": "user", "content": f"What is {a} plus {b}?"}
        wrong = a + b + r.choice([-2, -1, 1, 2])
        out.append({"chosen": [user, {"role": "assistant", "content": f"The answer is {a + b}."}],
                    "rejected": [user, {"role": "assistant", "content": f"The answer is {wrong}."}]})
    return out


def _dpo(tmp_path: Path, base, data, out, *extra, env=ENV):
    cmd = [sys.executable, "-m", "olmo2", "dpo", "--model", str(base), "--data", str(data), "--out", str(out),
           "--recipe", "tiny_dpo", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.glob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.slow  # five CLI runs of the tiny DPO (32 s on the 2 shared cores; passed)
def test_dpo_learns_caches_the_frozen_reference_and_resumes_after_sigkill(tmp_path):
    base = tiny_base(tmp_path / "base", max_seq_len=256)
    before = _digest(base)
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(16))
    full = _dpo(tmp_path, base, data, tmp_path / "full", *RUN)
    assert full.returncode == 0, full.stderr
    assert "16 pairs (0 dropped" in full.stderr and "computed and cached" in full.stderr
    rec = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert len(rec) == 8  # 16 pairs / 8 per step × 4 epochs
    # the policy moves away from the reference in the preferred direction
    # (each step sees other pairs, so compare the first and last halves of the run)
    margin = [r["rewards/margin"] for r in rec]
    assert sum(margin[4:]) / 4 > max(0.1, sum(margin[:4]) / 4), margin
    assert sum(r["loss"] for r in rec[4:]) < sum(r["loss"] for r in rec[:4]), [r["loss"] for r in rec]
    assert rec[0]["loss"] == pytest.approx(np.log(2), abs=0.05)  # step 1: policy ≈ reference
    # the reference stayed frozen: the base files are untouched and the cached log-probs equal
    # a fresh computation with the base model
    assert _digest(base) == before
    from olmo2.checkpoint import load_model
    from olmo2.post.dpo_run import encode_pairs, read_pairs, reference_logps
    from olmo2.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(base)
    enc = encode_pairs(tok, read_pairs([str(data)]), 256, add_bos=True)
    fresh = reference_logps(load_model(base), enc, tok.pad_id, average=True, progress=False)
    (cache,) = (tmp_path / "full").glob("ref_logps-*.json")
    np.testing.assert_allclose(np.asarray(json.loads(cache.read_text())["ref_logps"]), fresh, rtol=0, atol=1e-6)

    killed = _dpo(tmp_path, base, data, tmp_path / "resumed", *RUN,
                  env={**ENV, "OLMO2_TEST_SIGKILL_AFTER_STEP": "3"})
    assert killed.returncode == -9
    again = _dpo(tmp_path, base, data, tmp_path / "resumed", *RUN)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr and "read from the cache" in again.stderr, again.stderr
    a, b = load_model(tmp_path / "full" / "hf"), load_model(tmp_path / "resumed" / "hf")
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


def test_bad_pair_lines_are_file_line_errors(tmp_path):
    base = tiny_base(tmp_path / "base", max_seq_len=256)
    good = json.dumps(pairs(1)[0])
    data = write_jsonl(tmp_path / "pairs.jsonl", [good, '{"chosen": []}', "not json", good])
    res = _dpo(tmp_path, base, data, tmp_path / "run")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "pairs.jsonl:2:" in err[0], res.stderr
    assert "1 more bad lines" in err[0]


def test_pairs_data_batches_and_resume_state():
    from olmo2.post.dpo_run import EncodedPairs, PairsData
    enc = EncodedPairs(chosen=[([1, 2, 3][: 2 + i % 2], [-100, 2, 3][: 2 + i % 2]) for i in range(10)],
                       rejected=[([1, 5], [-100, 5]) for _ in range(10)])
    ref = np.arange(20, dtype=np.float64).reshape(10, 2)
    d = PairsData(enc, ref, global_batch_size=4, epochs=2, seed=0, pad_id=0)
    assert d.total_steps == 4  # ⌊10 / 4⌋ × 2: the partial batch is left out
    batches = list(d)
    assert len(batches) == 4
    b = batches[0]
    assert b["chosen_ids"].shape == b["rejected_ids"].shape and b["chosen_ids"].shape[0] == 4
    # each ref entry travels with its own pair
    for i in range(4):
        row = int(np.where(ref[:, 0] == b["ref_chosen"][i].item())[0][0])
        assert b["chosen_ids"][i, :len(enc.chosen[row][0])].tolist() == enc.chosen[row][0]
        assert b["ref_rejected"][i].item() == ref[row, 1]
    d2 = PairsData(enc, ref, 4, 2, 0, 0)
    it = iter(d2)
    next(it)
    sd = d2.state_dict()
    d3 = PairsData(enc, ref, 4, 2, 0, 0)
    d3.load_state_dict(sd)
    rest = list(d3)
    assert len(rest) == 3 and torch.equal(rest[0]["chosen_ids"], batches[1]["chosen_ids"])
