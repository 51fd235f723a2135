"""Tests for the synthetic arithmetic word problems and the OLMES GSM8K answer rule."""
from __future__ import annotations

import json

import pytest

from olmo2.data.arithmetic import (TEMPLATES, extract_answer, generate_problems, problem_text,
                                   split_of, write_jsonl)


def test_deterministic_and_well_formed():
    a = generate_problems(300, seed=3, split="train")
    assert a == generate_problems(300, seed=3, split="train")
    assert a != generate_problems(300, seed=4, split="train")
    assert {p["template"] for p in a} == set(TEMPLATES)
    for p in a:
        assert p["answer_text"].endswith(f"So the answer is {p['answer']}.")
        assert extract_answer(p["answer_text"]) == p["answer"] >= 0
        assert all(0 < x < 100 for x in p["operands"])
        assert p["question"].endswith("?")
    assert problem_text(a[0]).startswith("Question: ") and "\nAnswer: " in problem_text(a[0])


def test_train_test_disjoint():
    train = generate_problems(5000, seed=0, split="train")
    test = generate_problems(1000, seed=1, split="test")
    key = lambda p: (p["template"], tuple(p["operands"]))  # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in test}
    assert all(split_of(*key(p)) == "test" for p in test)
    assert len({key(p) for p in test}) > 500  # plenty of distinct held-out problems
    with pytest.raises(ValueError):
        generate_problems(1, split="dev")


@pytest.mark.parametrize("text,want", [
    ("12 + 7 = 19. So the answer is 19.", 19),
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", 18),
    ("The total is $1,234.", 1234),
    ("It costs $1,000,000 in all, so the answer is 1,000,000.", 1000000),
    ("So the answer is $18.00.", 18),
    ("The answer is 3.5", None),
    ("no numbers here", None),
    ("The temperature is -5", 5),  # OLMES regex binds the sign to decimals only
    ("First 10, then 20, finally 30", 30),
])
def test_extract_answer_olmes_rule(text, want):
    assert extract_answer(text) == want


def test_write_jsonl(tmp_path):
    probs = generate_problems(5, seed=0)
    write_jsonl(probs, tmp_path / "a.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [x["text"] for x in lines] == [problem_text(p) for p in probs]
