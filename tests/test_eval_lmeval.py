"""Agreement with lm-eval (the reference nobody here wrote): the same tiny checkpoint scored by
`olmo2 eval` (native backend) and by lm-eval's HF backend with local task files, on TruthfulQA
MC1/MC2 (lm-eval's own task YAMLs, pointed at the local mc_task.json) and an ARC-Challenge
subset in OLMES's RC format. Slow (lm-eval's import and HF forward passes): `-m slow`.
"""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow
N_TQA, N_ARC = 12, 12


def test_olmo2_eval_agrees_with_lm_eval(tmp_path, shared_data):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from eval_fixtures import make_checkpoint
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from olmo2.cli import main
    from olmo2.eval.lmeval_tasks import rc_task, truthfulqa_tasks
    from olmo2.eval.tasks_mc import load_mc_task
    from olmo2.eval.truthfulqa import load_truthfulqa
    ck = make_checkpoint(tmp_path / "m", max_seq_len=2048)
    tqa = load_truthfulqa(shared_data / "truthfulqa" / "mc_task.json")[:N_TQA]
    arc = load_mc_task("arc_challenge")["rc"].items[:N_ARC]
    tdir = tmp_path / "tasks"
    mc1, mc2 = truthfulqa_tasks(tdir, tqa, "local_tqa")
    rc = rc_task(tdir, arc, "local_arc_rc")
    lm = HFLM(pretrained=str(ck), batch_size=8, device="cpu", dtype="float32")
    res = simple_evaluate(model=lm, tasks=[mc1, mc2, rc],
                          task_manager=TaskManager(include_path=str(tdir)), log_samples=True)
    assert main(["eval", "--model", str(ck), "--tasks", "truthfulqa,arc_challenge", "--limit", str(N_TQA),
                 "--quiet", "--data-dir", str(shared_data), "--out", str(tmp_path / "ours")]) == 0
    ours = json.loads((tmp_path / "ours" / "results.json").read_text())["tasks"]
    tq_preds = [json.loads(l) for l in (tmp_path / "ours" / "truthfulqa" / "predictions.jsonl").read_text().splitlines()]
    arc_preds = [json.loads(l) for l in (tmp_path / "ours" / "arc_challenge" / "predictions.jsonl").read_text().splitlines()]

    samples = {t: sorted(res["samples"][t], key=lambda s: s["doc_id"]) for t in res["samples"]}
    dmax = max(abs(r[0] - c["logprob"]) for s, p in zip(samples["local_tqa_mc2"], tq_preds)
               for r, c in zip(s["filtered_resps"], p["mc2_choices"]))
    # Same prompts, same per-choice log-likelihoods, same per-example outcomes.
    for s, p in zip(samples["local_tqa_mc2"], tq_preds):
        assert s["arguments"][0][0] == p["prompt"]
        lls = [r[0] for r in s["filtered_resps"]]
        assert max(abs(a - b["logprob"]) for a, b in zip(lls, p["mc2_choices"])) <= 1e-3
        assert s["acc"] == pytest.approx(p["mc2"], abs=1e-4)
    assert [s["acc"] for s in samples["local_tqa_mc1"]] == [float(p["mc1_correct"]) for p in tq_preds]
    for s, p in zip(samples["local_arc_rc"], arc_preds):
        assert s["arguments"][0][0] + s["arguments"][0][1] == p["rc"]["prompt"] + p["rc"]["choices"][0]["continuation"]
        lls = [r[0] for r in s["filtered_resps"]]
        assert max(abs(a - b["logprob"]) for a, b in zip(lls, p["rc"]["choices"])) <= 1e-3
        assert s["acc"] == float(_raw_pick(p["rc"]) == p["gold"])
    # Aggregates within 0.5 points.
    r = res["results"]
    print(f"\nlm-eval agreement: max |dLL| TruthfulQA {dmax:.2e}; mc1 {r['local_tqa_mc1']['acc,none']:.4f} vs "
          f"{ours['truthfulqa']['metrics']['mc1']['value']:.4f}, mc2 {r['local_tqa_mc2']['acc,none']:.4f} vs "
          f"{ours['truthfulqa']['metrics']['mc2']['value']:.4f}, arc rc acc {r['local_arc_rc']['acc,none']:.4f} vs "
          f"{ours['arc_challenge']['metrics']['rc_acc_raw']['value']:.4f}")
    assert abs(100 * r["local_tqa_mc1"]["acc,none"] - 100 * ours["truthfulqa"]["metrics"]["mc1"]["value"]) <= 0.5
    assert abs(100 * r["local_tqa_mc2"]["acc,none"] - 100 * ours["truthfulqa"]["metrics"]["mc2"]["value"]) <= 0.5
    assert abs(100 * r["local_arc_rc"]["acc,none"] - 100 * ours["arc_challenge"]["metrics"]["rc_acc_raw"]["value"]) <= 0.5


def _raw_pick(rc_pred: dict) -> int:
    lls = [c["logprob"] for c in rc_pred["choices"]]
    return max(range(len(lls)), key=lambda i: (lls[i], -i))
