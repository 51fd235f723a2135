"""GSM8K answer extraction, TruthfulQA MC2 math, data loaders, and OLMES byte-identical prompts."""
from __future__ import annotations

import json
import math

import pytest

from olmo2.errors import DataError
from olmo2.eval import gsm8k, truthfulqa
from olmo2.eval.task_types import mean_stderr


@pytest.mark.parametrize("text,expected", [
    (" So the answer is 18.", ("18", True)),
    (" 1,234 + 5 = 1,239. So the answer is 1,239.", ("1239", True)),    # commas inside numbers go
    (" She pays $2.50 each, so the answer is $7.5.", ("7.5", True)),     # $ and trailing period
    (" The total is .75 of it", (".75", True)),
    (" It drops to -5 degrees.", ("5", True)),    # OLMES's regex: a minus only before a decimal
    (" down to -0.5", ("-0.5", True)),
    (" 3, 4, 5 and 12", ("12", True)),            # ", " is not a thousands separator
    (" I don't know.", (" I don't know.", False)),  # no number: a format failure
    ("", ("", False)),
])
def test_gsm8k_extraction(text, expected):
    assert gsm8k.extract_answer(text) == expected


@pytest.mark.parametrize("pred,gold,ok", [
    ("18", "18", True), ("1239", "1,239", True), ("7.5", "$7.5", True), ("8", "8.", True),
    ("5", "-5", False), ("18.0", "18", False), ("18", "#### 18", True)])
def test_gsm8k_exact_match_ignores(pred, gold, ok):
    assert gsm8k.is_correct(pred, gold) is ok


def test_mc2_known_probabilities():
    # p = 0.5, 0.25 true; 0.125, 0.125 false -> 0.75 / 1.0
    lls = [math.log(x) for x in (0.5, 0.25, 0.125, 0.125)]
    assert truthfulqa.mc2_score(lls[:2], lls[2:]) == pytest.approx(0.75, abs=1e-12)
    # unnormalised and tiny: ratio still exact where exp() would underflow to 0/0
    assert truthfulqa.mc2_score([-2000.0], [-2000.0 + math.log(3)]) == pytest.approx(0.25, abs=1e-12)


def test_stderr_is_sample_stderr():
    mu, se = mean_stderr([1, 0, 1, 0])
    assert mu == 0.5 and se == pytest.approx(math.sqrt((4 * 0.25) / 3 / 4))


def test_truthfulqa_loads_both_formats(tmp_path, shared_data):
    items = truthfulqa.load_truthfulqa(shared_data / "truthfulqa" / "mc_task.json")
    assert len(items) == 817 and sum(t for _, t in items[0].mc1) == 1
    hf = tmp_path / "hf.jsonl"
    hf.write_text(json.dumps({"question": "Q?", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 0]},
                              "mc2_targets": {"choices": ["a", "b", "c"], "labels": [1, 1, 0]}}) + "\n")
    (it,) = truthfulqa.load_truthfulqa(hf)
    assert it.mc2 == (("a", True), ("b", True), ("c", False))


def test_truthfulqa_prompt_matches_the_published_primer():
    ctx = truthfulqa.plain_context("Why is the sky blue?")
    assert ctx.startswith("Q: What is human life expectancy in the United States?\nA: Human life expectancy in the "
                          "United States is 78 years.\n\nQ: Who was president")
    assert ctx.endswith("in Barcelona, Spain.\n\nQ: Why is the sky blue?\nA:") and ctx.count("\n\nQ: ") == 6


def test_malformed_files_name_file_and_line(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"question": "a", "answer": "x #### 1"}\n{"question": "b"\n')
    with pytest.raises(DataError, match=r"test\.jsonl:2: "):
        gsm8k.load_gsm8k_jsonl(bad)
    tq = tmp_path / "mc_task.json"
    tq.write_text('[{"question": "q", "mc1_targets": {"a": 1}, "mc2_targets": {"a": 1, "b": 0}}]')
    with pytest.raises(DataError, match=r"mc_task\.json: item 0 mc1_targets: needs at least one true and one false"):
        truthfulqa.load_truthfulqa(tq)
    tq.write_text('[{"question": "q",\n oops]')
    with pytest.raises(DataError, match=r"mc_task\.json:2: bad JSON"):
        truthfulqa.load_truthfulqa(tq)


def test_gsm8k_prompts_byte_identical_to_olmes(wheel, shared_data):
    """All 1319 gsm8k::olmes contexts equal OLMES's stored requests byte for byte (8-shot,
    despite the folder name), and our gold short answers equal OLMES's."""
    from olmo2.eval.olmes_wheel import docs_by_id, read_task
    cfg, reqs = read_task(wheel, "gsm8k", "gold_bpb_5shot")
    assert cfg["task_config"]["num_shots"] == 8 and cfg["task_config"]["fewshot_source"] == "STD:GSM8k"
    assert tuple(cfg["task_config"]["generation_kwargs"]["stop_sequences"]) == gsm8k.STOPS
    assert tuple(cfg["task_config"]["metric_kwargs"]["regexes_to_ignore"]) == gsm8k.IGNORE_REGEXES
    docs = docs_by_id(reqs)
    items = gsm8k.load_gsm8k_jsonl(shared_data / "gsm8k" / "test.jsonl")
    assert len(docs) == len(items) == 1319
    same = sum(gsm8k.olmes_context(it.question) == ctx for it, (_, ctx, _) in zip(items, docs))
    assert same == 1319
    assert all(it.short_answer == d["short_answer"] for it, (d, _, _) in zip(items, docs))
