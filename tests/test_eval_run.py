"""`olmo2 eval` end to end on a tiny checkpoint: outputs, determinism, backends, bad input."""
from __future__ import annotations

import json

import pytest

from eval_fixtures import make_checkpoint
from olmo2.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "m", max_seq_len=4096)


def _run(ckpt, out, data, *extra, limit=3):
    return main(["eval", "--model", str(ckpt), "--tasks", "gsm8k,truthfulqa", "--limit", str(limit), "--quiet",
                 "--max-new-tokens", "8", "--data-dir", str(data), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def two_runs(ckpt, tmp_path_factory):
    """The same command twice (the shared data must be present)."""
    from conftest import SHARED_DATA
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent")
    d = tmp_path_factory.mktemp("runs")
    assert _run(ckpt, d / "a", SHARED_DATA) == 0
    assert _run(ckpt, d / "b", SHARED_DATA) == 0
    return d


def test_eval_writes_results_and_is_deterministic(two_runs):
    tmp_path = two_runs
    for f in ("results.json", "gsm8k/predictions.jsonl", "truthfulqa/predictions.jsonl"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert len(res["model"]["weights_sha256"]) == 64 and res["olmo2_version"]
    t = res["tasks"]["truthfulqa"]
    assert t["task"] == "truthfulqa::olmo1" and t["n"] == 3 and set(t["metrics"]) == {"mc1", "mc2"}
    assert 0 <= t["metrics"]["mc2"]["value"] <= 1 and t["settings"]["num_shots"] == 6
    g = res["tasks"]["gsm8k"]
    assert g["settings"]["stop_sequences"] == ["Question:", "</s>", "<|im_end|>", "\n\n"]
    assert "format_failure_rate" in g["metrics"]
    preds = [json.loads(l) for l in (tmp_path / "a" / "truthfulqa" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(len(p["mc2_choices"]) >= 2 and "logprob" in p["mc2_choices"][0] for p in preds)
    assert preds[0]["prompt"].endswith("\nA:")


def test_native_and_hf_backends_give_identical_results(ckpt, shared_data, tmp_path):
    pytest.importorskip("transformers")
    assert _run(ckpt, tmp_path / "n", shared_data, "--backend", "native", limit=2) == 0
    assert _run(ckpt, tmp_path / "h", shared_data, "--backend", "hf", limit=2) == 0
    a = json.loads((tmp_path / "n" / "results.json").read_text())["results"]
    b = json.loads((tmp_path / "h" / "results.json").read_text())["results"]
    assert [(r["task"], r["metric"]) for r in a] == [(r["task"], r["metric"]) for r in b]
    for x, y in zip(a, b):
        if x["metric"] == "mc2":  # a probability ratio: fp32 summation order differs between backends
            assert x["value"] == pytest.approx(y["value"], abs=1e-5), x
        else:  # accuracies and rates: identical
            assert x["value"] == y["value"] and x["stderr"] == y["stderr"], x
    pa = [json.loads(l) for l in (tmp_path / "n" / "gsm8k" / "predictions.jsonl").read_text().splitlines()]
    pb = [json.loads(l) for l in (tmp_path / "h" / "gsm8k" / "predictions.jsonl").read_text().splitlines()]
    assert [p["output"] for p in pa] == [p["output"] for p in pb]


def test_chat_variant_uses_the_template(ckpt, shared_data, tmp_path, capsys):
    assert main(["eval", "--model", str(ckpt), "--tasks", "gsm8k,truthfulqa", "--limit", "1", "--chat",
                 "--max-new-tokens", "8", "--data-dir", str(shared_data), "--out", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err  # the progress line: examples/s and ETA per task
    assert "gsm8k::tulu | 1/1 (100%)" in err and "truthfulqa::tulu | 1/1 (100%)" in err
    assert err.count("examples/s") >= 4 and "ETA" in err
    res = json.loads((tmp_path / "c" / "results.json").read_text())
    assert res["tasks"]["gsm8k"]["task"] == "gsm8k::tulu" and res["tasks"]["truthfulqa"]["task"] == "truthfulqa::tulu"
    g = json.loads((tmp_path / "c" / "gsm8k" / "predictions.jsonl").read_text().splitlines()[0])
    assert g["prompt"].endswith("<|assistant|>\nAnswer:") and g["prompt"].count("<|user|>\nQuestion: ") == 9
    t = json.loads((tmp_path / "c" / "truthfulqa" / "predictions.jsonl").read_text().splitlines()[0])
    assert t["prompt"].startswith("<|user|>\nQ: What is human") and t["prompt"].endswith("\nA:\n<|assistant|>\n")


def test_short_context_drops_leading_shots_and_counts_them(tmp_path, shared_data):
    small = make_checkpoint(tmp_path / "small", max_seq_len=400)
    assert main(["eval", "--model", str(small), "--tasks", "truthfulqa", "--limit", "4", "--quiet",
                 "--data-dir", str(shared_data), "--out", str(tmp_path / "r")]) == 0
    t = json.loads((tmp_path / "r" / "results.json").read_text())["tasks"]["truthfulqa"]
    assert t["dropped_shot_items"] > 0
    preds = [json.loads(l) for l in (tmp_path / "r" / "truthfulqa" / "predictions.jsonl").read_text().splitlines()]
    assert any(not p["prompt"].startswith("Q: What is human life expectancy") for p in preds)
    assert all(p["prompt"].startswith("Q: ") for p in preds)  # whole shots only


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, shared_data, capsys):
    tiny = make_checkpoint(tmp_path / "t", max_seq_len=16)
    cases = [
        (["--tasks", "gsm8k,nope"], "--tasks: unknown task nope"),
        (["--tasks", "truthfulqa", "--batch-size", "0"], "--batch-size must be"),
        (["--tasks", "truthfulqa"], "even with all 6 shots dropped"),
    ]
    for extra, msg in cases:
        rc = main(["eval", "--model", str(tiny), "--quiet", "--data-dir", str(shared_data), "--limit", "2",
                   "--out", str(tmp_path / "out"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1].startswith("error: ") and msg in err[-1], err
        assert not (tmp_path / "out").exists()
    bad = tmp_path / "data" / "gsm8k"
    bad.mkdir(parents=True)
    (bad / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\nnot json\n')
    rc = main(["eval", "--model", str(tiny), "--tasks", "gsm8k", "--data-dir", str(tmp_path / "data"),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "test.jsonl:2:" in err[-1] and not (tmp_path / "out").exists()


def test_report_renders_measured_next_to_published(two_runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "card.md"
    assert main(["eval", "report", str(two_runs / "a"), "--out", str(out)]) == 0
    md = out.read_text()
    res = json.loads((two_runs / "a" / "results.json").read_text())
    mc2 = res["tasks"]["truthfulqa"]["metrics"]["mc2"]
    assert f"**{100 * mc2['value']:.1f}** (measured here, truthfulqa::olmo1; n=3, ±{100 * mc2['stderr']:.1f})" in md
    assert "format fail" in md
    for row in ("| Gemma 3 1B | 35.0 (published) | 43.8 (published) |",
                "| Llama 3.2 1B | 45.4 (published) | 41.5 (published) |",
                "| Qwen 2.5 1.5B | 66.2 (published) | 46.5 (published) |",
                "| OLMo 2 1B Instruct | 68.3 (published) | 48.7 (published) |"):
        assert row in md
    assert (tmp_path / "card.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", "report", str(tmp_path), "--out", str(out)]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_diff_lists_flipped_items(two_runs, tmp_path, capsys):
    import shutil
    b = tmp_path / "b"
    shutil.copytree(two_runs / "a", b)
    f = b / "truthfulqa" / "predictions.jsonl"
    recs = [json.loads(l) for l in f.read_text().splitlines()]
    recs[1]["correct"] = not recs[1]["correct"]
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["eval", "diff", str(two_runs / "a"), str(b)]) == 0
    out = capsys.readouterr().out
    assert "truthfulqa: 3 common items" in out and "1 differ" in out and "item 1:" in out
    assert "gsm8k: 3 common items" in out and "0 differ" in out
    # an lm-eval samples file (doc_id + acc) against our run, one task
    lm = tmp_path / "samples_truthfulqa_mc1.jsonl"
    lm.write_text("".join(json.dumps({"doc_id": r["idx"], "acc": 1.0}) + "\n" for r in recs[:2]))
    assert main(["eval", "diff", str(two_runs / "a"), str(lm), "--task", "truthfulqa"]) == 0
    out = capsys.readouterr().out
    wrong = sum(1 for r in recs[:2] if not json.loads((two_runs / "a" / "truthfulqa" / "predictions.jsonl")
                                                      .read_text().splitlines()[r["idx"]])["correct"])
    assert "2 common items (A only 1, B only 0)" in out and f"{wrong} differ" in out
