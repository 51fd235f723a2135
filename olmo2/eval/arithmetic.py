"""Evaluations for the replication: arithmetic exact match (greedy) and validation bpb.

    from olmo2.eval.arithmetic import easy_problems, arithmetic_accuracy, val_bits_per_byte
    acc = arithmetic_accuracy(model, tok, easy_problems(200, split="test"))
    bpb = val_bits_per_byte(model, tok, "val.jsonl", max_docs=40, max_chars=3000)

Arithmetic task: the prompt is `<|endoftext|>Question: ...\\nAnswer:` (pretraining docs
follow an EOS); generation is greedy, batched, and stops at EOS or a newline; the text
before the first newline is scored with `extract_answer` (OLMES GSM8K rule) against the
integer answer. `easy_problems` is the CPU replication's task: 1–2 digit addition and
subtraction in the fixed templates of `olmo2.data.arithmetic`, with its hash-based
train/test split, so no test problem is ever a training problem.

Validation bpb: the first `max_docs` documents of a JSONL file in file order, each cut to
its first `max_chars` characters, scored with `olmo2.eval.bpb.corpus_bits_per_byte` —
deterministic, and a few seconds for a tiny model.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from olmo2.data.arithmetic import ITEMS, NAMES, extract_answer, render, split_of
from olmo2.eval.bpb import corpus_bits_per_byte

EASY_TEMPLATES = ("add", "sub")


def easy_problems(n: int, seed: int = 0, split: str = "train", max_operand: int = 50) -> list[dict]:
    """`n` deterministic add/sub problems with operands in [1, max_operand] from `split`."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"olmo2-easy-arith-{seed}-{split}-{max_operand}")
    out = []
    while len(out) < n:
        t = rng.choice(EASY_TEMPLATES)
        a = rng.randint(1, max_operand)
        b = rng.randint(1, max_operand) if t == "add" else rng.randint(1, a)
        if split_of(t, (a, b)) == split:
            out.append(render(t, (a, b), rng.choice(NAMES), rng.choice(ITEMS)))
    return out


def prompt_of(p: dict) -> str:
    """The question part of a problem document."""
    return f"Question: {p['question']}\nAnswer:"


@torch.inference_mode()
def arithmetic_generations(model, tokenizer, problems: list[dict], max_new_tokens: int = 24,
                           batch_size: int = 64) -> list[str]:
    """Greedy completions (text before the first newline) for each problem's prompt."""
    from olmo2.infer.generate import generate
    was_training = model.training
    model.eval()
    outs: list[str] = []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i:i + batch_size]
        prompts = [[tokenizer.eos_id] + tokenizer.encode(prompt_of(p)) for p in chunk]
        ids = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=0,
                       eos_token_id=tokenizer.eos_id, stop_strings=["\n"], tokenizer=tokenizer,
                       pad_token_id=tokenizer.pad_id)
        width = max(len(p) for p in prompts)  # left-padded: every prompt ends at `width`
        for row in ids.tolist():
            gen = [t for t in row[width:] if t not in (tokenizer.pad_id, tokenizer.eos_id)]
            outs.append(tokenizer.decode(gen).split("\n")[0])
    model.train(was_training)
    return outs


def arithmetic_accuracy(model, tokenizer, problems: list[dict], return_outputs: bool = False, **kw):
    """Exact-match accuracy (extract_answer == answer) of greedy generations."""
    outs = arithmetic_generations(model, tokenizer, problems, **kw)
    hits = [extract_answer(o) == p["answer"] for o, p in zip(outs, problems)]
    acc = sum(hits) / max(len(hits), 1)
    return (acc, outs) if return_outputs else acc


def val_texts(path: str | Path, max_docs: int = 40, max_chars: int = 3000) -> list[str]:
    """The first `max_docs` non-empty docs of a JSONL file, each cut to `max_chars` chars."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(texts) >= max_docs:
                break
            line = line.strip()
            if not line:
                continue
            t = json.loads(line).get("text", "")
            if t:
                texts.append(t[:max_chars])
    return texts


@torch.inference_mode()
def val_bits_per_byte(model, tokenizer, path_or_texts, max_docs: int = 40, max_chars: int = 3000,
                      max_len: int | None = None) -> float:
    """Bits per byte over the capped validation docs (see the module docstring)."""
    texts = path_or_texts if isinstance(path_or_texts, list) else val_texts(path_or_texts, max_docs, max_chars)
    was_training = model.training
    model.eval()
    try:
        return corpus_bits_per_byte(model, tokenizer, texts, max_len=max_len)
    finally:
        model.train(was_training)
