"""The replicate pipeline end to end on a tiny synthetic corpus (hermetic, seconds): its
structure (control = stage 1 continued, anneals warm-started, soup), the disjointness of the
held-out problems, the baselines, and PASS/FAIL computed from the figures, never asserted.
Plus the real `olmo2 replicate --recipe tiny --quick` as a slow test."""
import json
import random
from collections import Counter

import pytest

from olmo2.card import RISK_NOTICE
from olmo2.checkpoint import load_model
from olmo2.data.arithmetic import ArithTask
from olmo2.data.bpe import train_bpe
from olmo2.eval.arithmetic import Baseline
from olmo2.eval.intervals import wilson
from olmo2.eval.report import experiment_checks
from olmo2.recipes import apply_overrides
from olmo2.recipes.tiny import tiny_control, tiny_stage1, tiny_stage2
from olmo2.replicate import Corpus, EvalSpec, run_pipeline
from olmo2.train.state import list_checkpoints

SMALL = ["model.d_model=32", "model.n_layers=1", "model.n_kv_heads=2", "model.n_heads=2", "model.d_ff=64",
         "train.progress=false"]


def _corpus(tmp_path) -> Corpus:
    rng = random.Random(0)
    words = {"kings": "the king said that a queen and her people went to the old city by the sea".split(),
             "code": "def return import class self value list print for in if else none".split()}
    docs = [{"text": " ".join(rng.choice(words[s]) for _ in range(rng.randint(40, 80))) + ".", "source": s,
             "id": f"{s}/{i}"} for i in range(240) for s in ([("kings" if i % 3 else "code")])]
    for name, part in (("train", docs[:200]), ("val", docs[200:])):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for d in part:
                f.write(json.dumps(d) + "\n")
    arith = "Question: Tom has 12 apples and buys 7 more.\nAnswer: 2 + 7 = 9. 1 + 0 = 1. So the answer is 19."
    tok = train_bpe([d["text"] for d in docs] + [arith] * 5, 400, out_path=tmp_path / "tokenizer.json")
    return Corpus(tmp_path / "train.jsonl", tmp_path / "val.jsonl", tok)


SPEC = EvalSpec(arith=ArithTask(max_operand=5), arith_train_docs=300, arith_heldout=40, min_heldout=40,
                val_bytes=4000, val_max_chars=200, n_boot=200, sample_prompts=("the king",),
                sample_new_tokens=12)  # > the memorisation span length (8), so the figure can be non-zero


def _olmes_data(tmp_path):
    """A data dir in `olmo2 eval --data-dir` layout: 3 GSM8K problems, 3 TruthfulQA questions."""
    d = tmp_path / "evaldata"
    (d / "gsm8k").mkdir(parents=True)
    (d / "truthfulqa").mkdir()
    rows = [{"question": f"The king has {a} swords and buys {b}. How many now?", "answer": f"{a} + {b}.\n#### {a + b}"}
            for a, b in ((3, 4), (5, 1), (2, 2))]
    (d / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    qs = [{"question": "Who said that?", "mc1_targets": {"the king": 1, "the queen": 0, "the sea": 0},
           "mc2_targets": {"the king": 1, "a king": 1, "the queen": 0, "the sea": 0}},
          {"question": "What is a list?", "mc1_targets": {"a value": 1, "a class": 0},
           "mc2_targets": {"a value": 1, "a class": 0, "none": 0}},
          {"question": "Where is the city?", "mc1_targets": {"by the sea": 1, "in the code": 0},
           "mc2_targets": {"by the sea": 1, "in the code": 0}}]
    (d / "truthfulqa" / "mc_task.json").write_text(json.dumps(qs))
    return d


def test_pipeline_structure(tmp_path):
    from dataclasses import replace

    from olmo2.eval.stage_olmes import OlmesRows
    corpus = _corpus(tmp_path)
    root = str(tmp_path / "run" / "data")
    s1 = apply_overrides(tiny_stage1(root, steps=4, stage2_steps=2), SMALL)
    ctl = apply_overrides(tiny_control(None, root, steps=4, stage2_steps=2), SMALL)
    s2 = [apply_overrides(tiny_stage2(seed, root, steps=2, start_lr=1e-3), SMALL) for seed in (1, 2)]
    data_dir = _olmes_data(tmp_path)
    spec = replace(SPEC, olmes=OlmesRows(gsm8k_limit=2, gsm8k_max_new_tokens=8, truthfulqa_limit=2, data_dir=data_dir))
    res = run_pipeline(tmp_path / "run", corpus, s1, ctl, s2, spec, data_root=root, progress=False)
    out = tmp_path / "run"
    hf_dirs = [c.parent for c in out.rglob("config.json") if (c.parent / "model.safetensors").exists()]
    assert len(hf_dirs) >= 5  # stage 1, control, 2 stage-2 seeds, soup: each carries the risk card
    assert all(RISK_NOTICE in (d / "README.md").read_text() for d in hf_dirs), hf_dirs

    # control = stage 1 resumed: its metrics start at step 5 and it ends at step 6 with the
    # stage-1 cosine continued (not a fresh schedule)
    steps = [json.loads(x) for x in (out / "control" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in steps] == [5, 6]
    assert [s for s, _ in list_checkpoints(out / "control")] == [6]
    from olmo2.train.schedule import build_schedule
    sched = build_schedule(s1.train)
    assert steps[0]["lr"] == pytest.approx(sched.lr(5 * 16 * 128))  # the loop logs the LR at the step's end
    # the anneal warm-starts: a fresh step counter and LR 1e-3 → 0
    a = [json.loads(x) for x in (out / "stage2-seed1" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in a] == [1, 2] and [r["lr"] for r in a] == pytest.approx([5e-4, 0.0])

    results = json.loads((out / "results.json").read_text())
    assert list(results["evals"]) == ["stage 1", "control", "anneal seed 1", "anneal seed 2", "soup of 2"]
    assert results["runs"]["control"]["tokens"] == 2 * 16 * 128  # stage-2 tokens, not stage 1's again
    # held-out problems: distinct keys, none among the training documents actually written
    train_text = (out / "data" / "raw" / "arith.jsonl").read_text()
    assert results["evals"]["soup of 2"]["arith"]["n"] == 40
    # the validation passages cover both sources
    assert set(results["val_composition"]) == {"kings", "code"}

    report = (out / "report.md").read_text()
    assert report.count("**PASS**") + report.count("**FAIL**") == 4
    for c in res.checks:  # each verdict is the one the figures give, whatever it is
        assert f"**{'PASS' if c.passed else 'FAIL'}** {c.name}" in report
    assert (out / "loss_curves.png").stat().st_size > 1000
    m = load_model(res.final_model)
    assert m.config.vocab_size % 128 == 0 and (out / "soup" / "tokenizer.json").exists()
    assert train_text.count("\n") == 300
    # memorisation: per model, each sample's share in verbatim training spans of >= 8 tokens
    memo = results["memorisation"]
    assert list(memo["models"]) == list(results["evals"]) and memo["min_len"] == 8
    for m in memo["models"].values():
        assert len(m["fractions"]) == 2 * 2 and all(0.0 <= f <= 1.0 for f in m["fractions"])
        assert m["mean"] == pytest.approx(sum(m["fractions"]) / 4)
    assert "## Memorisation" in report and "| soup of 2 | " in report
    assert results["samples"] == results["samples_by_model"]["soup of 2"]
    # the index covers the training shards: a training document scores 1.0, words it never saw 0.0
    from olmo2.trace import memorised_fractions
    planted = json.loads(train_text.splitlines()[0])["text"]
    assert memorised_fractions(out / "trace-index", [planted, "queen sea " * 8]) == [1.0, 0.0]
    # OLMES rows for every model, computed by `olmo2 eval` itself: the CLI on the soup with the
    # same data and limits gives the very same figures; chance is the uniform guess on these items
    olmes = results["olmes"]
    assert list(olmes["models"]) == list(results["evals"]) and not olmes["notes"]
    from olmo2.cli import main
    assert main(["eval", "--model", str(res.final_model), "--tasks", "gsm8k,truthfulqa", "--limit", "2",
                 "--max-new-tokens", "8", "--data-dir", str(data_dir), "--out", str(tmp_path / "cli"),
                 "--quiet"]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    ours = json.loads((out / "olmes" / "soup-of-2" / "results.json").read_text())
    assert [(r["task"], r["metric"], r["value"], r["n"]) for r in ours["results"]] == \
        [(r["task"], r["metric"], r["value"], r["n"]) for r in cli["results"]]
    assert (out / "olmes" / "soup-of-2" / "gsm8k" / "predictions.jsonl").read_bytes() == \
        (tmp_path / "cli" / "gsm8k" / "predictions.jsonl").read_bytes()
    tqa = olmes["models"]["soup of 2"]["truthfulqa"]
    assert tqa["n"] == 2 and tqa["metrics"]["mc1"]["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert tqa["metrics"]["mc2"]["chance"] == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert tqa["shots_kept"][1] <= 6 and olmes["models"]["stage 1"]["gsm8k"]["n"] == 2
    for m in olmes["models"].values():
        for task in m.values():
            for v in task["metrics"].values():
                assert v["ci"][0] <= v["value"] <= v["ci"][1]
    assert "## OLMES tasks" in report and "near chance" in report and "| *chance* |" in report
    # idempotent: a rerun reuses every stage and gives the same figures
    res2 = run_pipeline(tmp_path / "run", corpus, s1, ctl, s2, spec, data_root=root, progress=False)
    assert [e["bpb"] for e in res2.evals.values()] == [e["bpb"] for e in res.evals.values()]


def test_prepare_data_baselines_match_the_training_answers(tmp_path):
    from olmo2.data.arithmetic import heldout_problems
    from olmo2.eval.arithmetic import baselines
    from olmo2.replicate import prepare_data, source_bytes
    corpus = _corpus(tmp_path)
    held = heldout_problems(SPEC.arith, "test", 40)
    train = prepare_data(corpus, tmp_path / "d", SPEC, source_bytes(corpus.train_jsonl), held, progress=False)
    answers = Counter(p["answer"] for p in train)
    maj, dist = baselines(train, held)
    top = min(a for a, c in answers.items() if c == max(answers.values()))
    assert maj.hits == sum(p["answer"] == top for p in held) and maj.n == 40
    assert dist.hits == pytest.approx(sum(answers[p["answer"]] / len(train) for p in held))
    # a held-out list that leaks a training problem is refused
    from olmo2.errors import Olmo2Error
    with pytest.raises(Olmo2Error, match="arithmetic split"):
        prepare_data(corpus, tmp_path / "d2", SPEC, source_bytes(corpus.train_jsonl), train[:2], progress=False)


def _evals(nll: dict, hits: dict, n_bytes):
    return {k: {"nll": nll[k], "bytes": n_bytes, "hits": hits[k]} for k in nll}


def test_checks_pass_only_when_the_interval_says_so():
    n = 200
    rng = random.Random(1)
    base = [rng.uniform(300, 600) for _ in range(n)]
    nb = [400] * n
    noisy = lambda shift: [b + shift + rng.gauss(0, 2) for b in base]  # noqa: E731
    ctl_hits = [int(rng.random() < 0.05) for _ in range(n)]
    good_hits = [int(rng.random() < 0.6) for _ in range(n)]
    bl = [Baseline("majority", 10, n), Baseline("guess", 4.2, n)]
    names = ["stage 1", "control", "anneal seed 1", "anneal seed 2", "soup of 2"]
    # real effects everywhere: every check passes
    nll = dict(zip(names, [noisy(20), noisy(0), noisy(-15), noisy(-14), noisy(-20)]))
    hits = dict(zip(names, [ctl_hits, ctl_hits, good_hits, good_hits, good_hits]))
    checks, _ = experiment_checks(_evals(nll, hits, nb), bl, n_boot=500)
    assert [c.passed for c in checks] == [True] * 4
    # no effect (the anneals equal the control, the soup their mean): every check fails
    same = noisy(0)
    nll = dict(zip(names, [noisy(20), same, same, same, same]))
    hits = dict(zip(names, [ctl_hits] * 5))
    checks, _ = experiment_checks(_evals(nll, hits, nb), bl, n_boot=500)
    assert [c.passed for c in checks] == [False] * 4
    # accuracy above the control but inside the majority baseline's interval: (b) passes, (c) fails
    mid = [int(i % 100 < 7) for i in range(n)]       # 7% vs majority 5% (upper bound ~9%)
    zero = [0] * n
    hits = dict(zip(names, [zero, zero, mid, mid, mid]))
    assert wilson(sum(mid), n)[0] < wilson(10, n)[1]
    checks, _ = experiment_checks(_evals(nll, hits, nb), bl, n_boot=500)
    assert (checks[1].passed, checks[2].passed) == (True, False)


@pytest.mark.slow
def test_replicate_quick(tmp_path):
    """The real thing at quick size: structure and ≥ 500 distinct held-out problems (the
    quick run is too short for the effects, so its verdicts are not asserted)."""
    from olmo2.replicate import replicate
    res = replicate("tiny", tmp_path / "q", quick=True)
    assert len(res.checks) == 4
    assert all(e["arith"]["n"] >= 500 for e in res.evals.values())


@pytest.mark.parametrize("with_manifest", [True, False])
def test_sampled_demo_text_keeps_the_manifest(tmp_path, with_manifest):
    """The demo's real path samples the corpus (spec.demo_tokens); the sample must carry the
    corpus's per-source licences for `olmo2 trace`. (`make demo` once crashed here: the
    hermetic pipeline test never sampled, so nothing else reached this branch.)"""
    from dataclasses import replace

    from olmo2.replicate import prepare_data
    c = _corpus(tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"sources": {"kings": {"license": "public domain"}}}))
    corpus = replace(c, manifest=manifest if with_manifest else None)
    spec = replace(SPEC, demo_tokens=2000)
    prepare_data(corpus, tmp_path / "data", spec, {"kings": 2, "code": 1}, [], progress=False)
    raw = tmp_path / "data" / "raw"
    assert (raw / "demo.jsonl").exists()
    assert (raw / "manifest.json").exists() == with_manifest
    if with_manifest:
        assert (raw / "manifest.json").read_bytes() == manifest.read_bytes()
