"""The replicate pipeline end to end on a tiny synthetic corpus (hermetic, seconds), plus the
real `olmo2 replicate --recipe tiny --quick` as a slow test."""
import json
import random

import pytest

from olmo2.card import RISK_NOTICE
from olmo2.checkpoint import load_model
from olmo2.data.bpe import train_bpe
from olmo2.recipes import apply_overrides
from olmo2.recipes.tiny import tiny_stage1, tiny_stage2
from olmo2.replicate import Corpus, EvalSpec, run_pipeline

SMALL = ["model.d_model=32", "model.n_layers=1", "model.n_kv_heads=2", "model.n_heads=2", "model.d_ff=64"]


def _corpus(tmp_path) -> Corpus:
    rng = random.Random(0)
    words = "the king said that a queen and her people went to the old city by the sea".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(40, 80))) + "." for _ in range(240)]
    for name, part in (("train", docs[:220]), ("val", docs[220:])):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for d in part:
                f.write(json.dumps({"text": d}) + "\n")
    tok = train_bpe(docs + ["Question: 12 + 7 = 19. So the answer is 19."], 400, out_path=tmp_path / "tokenizer.json")
    return Corpus(tmp_path / "train.jsonl", tmp_path / "val.jsonl", tok)


def test_pipeline_artifacts(tmp_path):
    corpus = _corpus(tmp_path)
    root = str(tmp_path / "run" / "data")
    s1 = apply_overrides(tiny_stage1(root, steps=4), SMALL + ["train.progress=false"])
    s2 = [apply_overrides(tiny_stage2(seed, root, steps=2, start_lr=1e-3), SMALL + ["train.progress=false"])
          for seed in (1, 2, 3)]
    spec = EvalSpec(arith_train_problems=300, arith_test_problems=6, bpb_docs=3, bpb_chars=300,
                    sample_prompts=("the king",), sample_new_tokens=4)
    res = run_pipeline(tmp_path / "run", corpus, s1, s2, spec, data_root=root, progress=False)
    out = tmp_path / "run"
    hf_dirs = [c.parent for c in out.rglob("config.json") if (c.parent / "model.safetensors").exists()]
    assert len(hf_dirs) >= 5  # stage 1, 3 stage-2 seeds, soup: each carries the risk card
    assert all(RISK_NOTICE in (d / "README.md").read_text() for d in hf_dirs), hf_dirs
    report = (out / "report.md").read_text()
    for row in ("stage 1 (pretrain)", "stage 2 seed 1", "stage 2 seed 2", "stage 2 seed 3", "soup of 3"):
        assert f"| {row} |" in report
    assert report.count("**PASS**") + report.count("**FAIL**") == 3
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert res.final_model == out / "soup"
    m = load_model(res.final_model)
    assert m.config.vocab_size % 128 == 0 and (out / "soup" / "tokenizer.json").exists()
    assert len(res.samples) == 2 and {"greedy", "sampled"} <= set(res.samples[0])
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 5
    # idempotent: a rerun reuses every stage
    res2 = run_pipeline(tmp_path / "run", corpus, s1, s2, spec, data_root=root, progress=False)
    assert [r.val_bpb for r in res2.rows] == [r.val_bpb for r in res.rows]


@pytest.mark.slow
def test_replicate_quick(tmp_path):
    from olmo2.replicate import replicate
    res = replicate("tiny", tmp_path / "q", quick=True)
    assert all(c.passed for c in res.checks), res.report
