"""Synthetic arithmetic word problems: the one generator that the tiny replication trains on
and evaluates with (GSM8K-style two-step problems, standing in for Dolmino's synthetic math).

    from olmo2.data.arithmetic import ArithTask, train_problems, heldout_problems, write_jsonl
    task = ArithTask()
    write_jsonl(train_problems(task, 8000, seed=0), "arith/train.jsonl")
    test = heldout_problems(task, "test", 600)          # DISTINCT problems, none in train

A *problem* is the key (op, a, b, c) with one-digit operands in [1, max_operand]:
"add" is a + b + c, "sub" is a + b - c (c <= a + b, so answers are >= 0). The answer is
worked in two steps, ending in "So the answer is N." like the OLMES GSM8K exemplars:

    Question: What is 3 + 5 - 4?
    Answer: 3 + 5 = 8. 8 - 4 = 4. So the answer is 4.

Splits: every key of the finite problem space hashes (sha256) into one of 10 buckets:
0-3 are "test", 4-5 "dev" (for tuning the recipe), 6-9 "train". So by construction no
held-out problem is ever trained on, under any seed or size (`check_disjoint` asserts it on
the actual lists), and the test split holds ~570 distinct problems.

Why this task (each alternative measured on the dev split, tiny model trained on pure
arithmetic from scratch): two-digit add/sub word problems (operands 1..99) reached 1.3%
(column working) and 1.7% (one equation) held-out exact match after 300k tokens: the demo
BPE writes most two-digit numbers as single tokens, so the model would have to learn
addition over arbitrary token ids. One-digit two-step *word* problems ("Tom has 3 apples.
Tom gets 5 more and then gives away 4...") reached 8% after 200k tokens, the model mostly
failing to copy the operands out of sentences whose length varies with the name and object.
Here every step is a one-digit table (a + b, then s ± c) that the training problems cover
many times over, the operands sit at fixed offsets, and the held-out *problems* (triples)
are new: the model must compose the steps, not recall a problem.

`extract_answer` is the OLMES GSM8K rule (last number in the text), used to score
generations; `parses` says whether a generation has the answer format at all.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass

from olmo2.fsio import atomic_file

OPS = ("add", "sub")
NUM_BUCKETS = 10
SPLIT_BUCKETS = {"test": (0, 1, 2, 3), "dev": (4, 5), "train": (6, 7, 8, 9)}


@dataclass(frozen=True)
class ArithTask:
    """The problem space."""
    max_operand: int = 9
    """Operands are drawn from [1, max_operand]."""

    def __post_init__(self):
        if not 2 <= self.max_operand <= 99:
            raise ValueError(f"max_operand must be in [2, 99], got {self.max_operand}")


def _bucket(key: tuple) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, key)).encode()).digest()[:8], "big") % NUM_BUCKETS


def split_of(key: tuple) -> str:
    """'train', 'dev' or 'test' for a problem key (op, a, b, c)."""
    b = _bucket(key)
    return next(s for s, bs in SPLIT_BUCKETS.items() if b in bs)


def problem_space(task: ArithTask) -> list[tuple]:
    """Every problem key of the task, in a fixed order."""
    r = range(1, task.max_operand + 1)
    return ([("add", a, b, c) for a in r for b in r for c in r]
            + [("sub", a, b, c) for a in r for b in r for c in r if c <= a + b])


def answer_of(key: tuple) -> int:
    op, a, b, c = key
    return a + b + c if op == "add" else a + b - c


def render(key: tuple) -> dict:
    """The problem dict {question, answer_text, answer, key}."""
    op, a, b, c = key
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}")
    sign = "+" if op == "add" else "-"
    s, ans = a + b, answer_of(key)
    return {"question": f"What is {a} + {b} {sign} {c}?",
            "answer_text": f"{a} + {b} = {s}. {s} {sign} {c} = {ans}. So the answer is {ans}.",
            "answer": ans, "key": list(key)}


def _keys_of(task: ArithTask, split: str) -> list[tuple]:
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"split must be one of {tuple(SPLIT_BUCKETS)}, got {split!r}")
    return [k for k in problem_space(task) if split_of(k) == split]


def train_problems(task: ArithTask, n: int, seed: int = 0) -> list[dict]:
    """`n` training documents: train-split keys drawn uniformly with replacement."""
    keys = _keys_of(task, "train")
    rng = random.Random(f"olmo2-arith-train-{seed}")
    return [render(rng.choice(keys)) for _ in range(n)]


def heldout_problems(task: ArithTask, split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` DISTINCT problems of the 'dev' or 'test' split (fewer if the split is smaller)."""
    if split == "train":
        raise ValueError("heldout_problems: use train_problems for the train split")
    keys = _keys_of(task, split)
    rng = random.Random(f"olmo2-arith-{split}-{seed}")
    chosen = rng.sample(keys, min(n, len(keys)))
    return [render(k) for k in chosen]


def check_disjoint(train: list[dict], heldout: list[dict]) -> None:
    """Raise ValueError unless no held-out problem key occurs among the training problems."""
    seen = {tuple(p["key"]) for p in train}
    both = [tuple(p["key"]) for p in heldout if tuple(p["key"]) in seen]
    if both:
        raise ValueError(f"{len(both)} held-out problems are also training problems, e.g. {both[0]}")


def prompt_of(p: dict) -> str:
    """The question part of a problem document (what evaluation prompts with)."""
    return f"Question: {p['question']}\nAnswer:"


def problem_text(p: dict) -> str:
    """The pretraining document for a problem: 'Question: ...\\nAnswer: ...'."""
    return f"{prompt_of(p)} {p['answer_text']}"


def write_jsonl(problems: list[dict], path: str | os.PathLike) -> None:
    """Write problems as JSONL documents (atomically) for `data tokenize`.

    `source` and `license` ride along so `olmo2 trace` can say where a traced span came from."""
    with atomic_file(path, "w") as f:
        for p in problems:
            f.write(json.dumps({"text": problem_text(p), "source": "arithmetic",
                                "license": "generated by olmo2 (Apache-2.0)"}) + "\n")


_NUM_COMMA = re.compile(r"(\d),(\d)")
_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")
_FINAL = re.compile(r"answer is \$?(\d[\d,]*)")


def extract_answer(text: str) -> int | None:
    """OLMES GSM8K rule: drop commas inside numbers, take the last number; None if none.

    Note the regex binds the sign only to decimals, so "-5" reads as 5 (as in OLMES).
    A non-integral last number returns None (GSM8K answers are integers).
    """
    nums = _NUMBER.findall(_NUM_COMMA.sub(r"\1\2", text))
    if not nums:
        return None
    v = float(nums[-1])
    return int(v) if v.is_integer() else None


def parses(text: str) -> bool:
    """Whether a generation has the answer format: it states 'answer is N'."""
    return _FINAL.search(text) is not None
