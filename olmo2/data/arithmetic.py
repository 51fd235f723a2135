"""Synthetic GSM8K-style arithmetic word problems for the tiny replication's stage-2 mix.

    from olmo2.data.arithmetic import generate_problems, write_jsonl, extract_answer
    write_jsonl(generate_problems(20000, seed=0, split="train"), "arith/train.jsonl")
    olmo2 data tokenize arith/train.jsonl --tokenizer tokenizer.json --out tok/arith

Stands in for Dolmino's synthetic math (TinyGSM etc.) at a scale a tiny model can learn in
minutes on a CPU: 1-2 digit operands, five templates (add, subtract, multiply, add-then-
subtract, multiply-then-add), answers written as a short chain of thought ending in
"So the answer is N." like the OLMES GSM8K exemplars:

    Question: Tom has 12 apples and buys 7 more. How many apples does Tom have?
    Answer: 12 + 7 = 19. So the answer is 19.

Splits: the *problem* is the tuple (template, operands); names and objects are surface
decoration. Each problem hashes (sha256) into one of 10 buckets; bucket 0 is "test", the
rest "train", so no test problem appears in train under any seed. `extract_answer` is the
OLMES GSM8K rule, used to score generations.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re

from olmo2.fsio import atomic_file

NAMES = ["Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Omar", "Zoe", "Ravi", "Emma", "Leo", "Ivy"]
ITEMS = ["apples", "books", "marbles", "pencils", "stickers", "cookies", "shells", "coins",
         "cards", "balloons"]
TEMPLATES = ("add", "sub", "mul", "add_sub", "mul_add")
TEST_BUCKETS, NUM_BUCKETS = (0,), 10


def _bucket(template: str, operands: tuple[int, ...]) -> int:
    key = f"{template}:{','.join(map(str, operands))}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % NUM_BUCKETS


def split_of(template: str, operands: tuple[int, ...]) -> str:
    """'test' or 'train' for a (template, operands) problem."""
    return "test" if _bucket(template, operands) in TEST_BUCKETS else "train"


def _operands(rng: random.Random, template: str) -> tuple[int, ...]:
    if template == "add":
        return rng.randint(1, 99), rng.randint(1, 99)
    if template == "sub":
        a = rng.randint(2, 99)
        return a, rng.randint(1, a)
    if template == "mul":
        return rng.randint(2, 12), rng.randint(2, 12)
    if template == "add_sub":
        a, b = rng.randint(1, 50), rng.randint(1, 49)
        return a, b, rng.randint(1, a + b)
    a, b = rng.randint(2, 9), rng.randint(2, 9)  # mul_add
    return a, b, rng.randint(1, 20)


def render(template: str, ops: tuple[int, ...], name: str, item: str) -> dict:
    """The problem dict {question, answer_text, answer, template, operands}."""
    if template == "add":
        a, b = ops
        q = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have?"
        ans = a + b
        steps = f"{a} + {b} = {ans}."
    elif template == "sub":
        a, b = ops
        q = (f"{name} has {a} {item} and gives {b} of them to a friend. "
             f"How many {item} does {name} have left?")
        ans = a - b
        steps = f"{a} - {b} = {ans}."
    elif template == "mul":
        a, b = ops
        q = (f"{name} has {a} boxes with {b} {item} in each box. "
             f"How many {item} does {name} have in total?")
        ans = a * b
        steps = f"{a} * {b} = {ans}."
    elif template == "add_sub":
        a, b, c = ops
        q = (f"{name} has {a} {item}, finds {b} more, and then loses {c}. "
             f"How many {item} does {name} have now?")
        ans = a + b - c
        steps = f"{a} + {b} = {a + b}. {a + b} - {c} = {ans}."
    elif template == "mul_add":
        a, b, c = ops
        q = (f"{name} buys {a} bags with {b} {item} in each bag and already had {c} {item}. "
             f"How many {item} does {name} have?")
        ans = a * b + c
        steps = f"{a} * {b} = {a * b}. {a * b} + {c} = {ans}."
    else:
        raise ValueError(f"unknown template {template!r}")
    return {"question": q, "answer_text": f"{steps} So the answer is {ans}.", "answer": ans,
            "template": template, "operands": list(ops)}


def generate_problems(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """`n` deterministic problems of `split` ('train' or 'test'); same args, same list."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"olmo2-arith-{seed}-{split}")
    out = []
    while len(out) < n:
        t = rng.choice(TEMPLATES)
        ops = _operands(rng, t)
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        if split_of(t, ops) == split:
            out.append(render(t, ops, name, item))
    return out


def problem_text(p: dict) -> str:
    """The pretraining document for a problem: 'Question: ...\\nAnswer: ...'."""
    return f"Question: {p['question']}\nAnswer: {p['answer_text']}"


def write_jsonl(problems: list[dict], path: str | os.PathLike) -> None:
    """Write problems as `{"text": ...}` JSONL documents (atomically) for `data tokenize`."""
    with atomic_file(path, "w") as f:
        for p in problems:
            f.write(json.dumps({"text": problem_text(p)}) + "\n")


_NUM_COMMA = re.compile(r"(\d),(\d)")
_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")


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
