"""The one arithmetic generator (training documents and held-out problems), its split by
construction, the column working, and the OLMES GSM8K answer rule."""
from __future__ import annotations

import json
import re

import pytest

from olmo2.data.arithmetic import (ArithTask, answer_of, check_disjoint, extract_answer, heldout_problems,
                                   parses, problem_space, problem_text, prompt_of, render, split_of,
                                   train_problems, write_jsonl)

TASK = ArithTask()


def test_problem_space_and_split_sizes():
    space = problem_space(TASK)
    n_sub = sum(1 for a in range(1, 10) for b in range(1, 10) for c in range(1, 10) if c <= a + b)
    assert len(space) == 9 ** 3 + n_sub == len(set(space))
    sizes = {s: sum(split_of(k) == s for k in space) for s in ("train", "dev", "test")}
    # 4/10 of the space is test (hash buckets): over 500 distinct held-out problems
    assert sizes["test"] >= 500 and 200 < sizes["dev"] < 350
    assert sizes["train"] == len(space) - sizes["test"] - sizes["dev"]


def test_heldout_is_distinct_and_disjoint_from_train_by_construction():
    train = train_problems(TASK, 20000, seed=5)
    train_keys = {tuple(p["key"]) for p in train}
    assert all(split_of(k) == "train" for k in train_keys)
    for split, n in (("dev", 250), ("test", 500)):
        held = heldout_problems(TASK, split, n)
        keys = [tuple(p["key"]) for p in held]
        assert len(keys) == len(set(keys)) == n  # distinct problems, not repeated surface forms
        assert not set(keys) & train_keys
        check_disjoint(train, held)
    assert not {tuple(p["key"]) for p in heldout_problems(TASK, "dev", 600)} & \
        {tuple(p["key"]) for p in heldout_problems(TASK, "test", 600)}
    # a leak is caught
    with pytest.raises(ValueError, match="also training problems"):
        check_disjoint(train, train[:3])
    with pytest.raises(ValueError):
        heldout_problems(TASK, "train", 5)


def test_every_step_of_the_working_is_seen_in_training():
    """Held-out problems are new triples, but each one-digit step (a + b, then s ± c) occurs in
    the training problems: what generalises is composing steps, not recalling problems."""
    train = train_problems(TASK, 8000, seed=0)
    steps = {(p["key"][1], p["key"][2]) for p in train}
    steps |= {(p["key"][0], p["key"][1] + p["key"][2], p["key"][3]) for p in train}
    held = heldout_problems(TASK, "test", 600)
    seen = sum((p["key"][1], p["key"][2]) in steps and
               (p["key"][0], p["key"][1] + p["key"][2], p["key"][3]) in steps for p in held)
    assert seen / len(held) > 0.75  # 82%: a few (s, c) second steps occur only in held-out triples


def test_deterministic():
    assert train_problems(TASK, 50, seed=1) == train_problems(TASK, 50, seed=1)
    assert train_problems(TASK, 50, seed=1) != train_problems(TASK, 50, seed=2)
    assert heldout_problems(TASK, "test", 30) == heldout_problems(TASK, "test", 30)


_STEP = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")


def test_every_problem_renders_correct_working():
    """Exhaustively: both equations are true, chained, and the stated answer is the key's."""
    for key in problem_space(TASK):
        p = render(key)
        assert extract_answer(p["answer_text"]) == p["answer"] == answer_of(key) >= 0
        assert p["answer_text"].endswith(f"So the answer is {p['answer']}.") and parses(p["answer_text"])
        (x1, o1, y1, z1), (x2, o2, y2, z2) = _STEP.findall(p["answer_text"])
        assert int(x1) + int(y1) == int(z1) == int(x2) and o1 == "+"
        assert (int(x2) + int(y2) if o2 == "+" else int(x2) - int(y2)) == int(z2) == p["answer"]
        assert [int(x1), int(y1), int(y2)] == list(key[1:])
        assert p["question"] == f"What is {key[1]} + {key[2]} {o2} {key[3]}?"


def test_examples():
    assert render(("sub", 3, 5, 4))["answer_text"] == "3 + 5 = 8. 8 - 4 = 4. So the answer is 4."
    p = render(("add", 9, 4, 7))
    assert p["answer_text"] == "9 + 4 = 13. 13 + 7 = 20. So the answer is 20."
    assert problem_text(p) == "Question: What is 9 + 4 + 7?\nAnswer: 9 + 4 = 13. 13 + 7 = 20. So the answer is 20."
    assert prompt_of(p) == "Question: What is 9 + 4 + 7?\nAnswer:"
    with pytest.raises(ValueError):
        ArithTask(max_operand=1)
    with pytest.raises(ValueError):
        render(("mul", 1, 2, 3))


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


def test_format_rate_is_separate_from_the_number():
    assert parses("3 + 5 = 8. 8 - 4 = 4. So the answer is 4.")
    assert not parses("3 + 5 = 8. 8 -")      # ran out mid-working: a number, no answer
    assert extract_answer("3 + 5 = 8. 8 -") == 8


def test_write_jsonl(tmp_path):
    probs = train_problems(TASK, 5)
    write_jsonl(probs, tmp_path / "a.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [x["text"] for x in lines] == [problem_text(p) for p in probs]
    assert {(x["source"], x["license"]) for x in lines} == {("arithmetic", "generated by olmo2 (Apache-2.0)")}
