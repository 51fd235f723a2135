"""Arithmetic exact match (greedy) for the replication, with format rate and baselines.

    from olmo2.data.arithmetic import ArithTask, heldout_problems, train_problems
    from olmo2.eval.arithmetic import arithmetic_eval, baselines
    r = arithmetic_eval(model, tok, heldout_problems(ArithTask(), "test", 600))
    r.accuracy, r.ci, r.format_rate           # hits/n, 95% Wilson interval, share that parses
    b = baselines(train, test)                 # majority answer and answer-distribution guess

Prompt: `<|endoftext|>Question: ...\\nAnswer:` (pretraining documents follow an EOS);
generation is greedy, batched, and stops at EOS or a newline. The generation is scored with
`extract_answer` (OLMES GSM8K rule: the last number) against the integer answer; separately,
`parses` says whether it stated "answer is N" at all (format rate), so a model that learned
the format but not the sums is told apart from one that learned neither. Problems come from
the one generator in `olmo2.data.arithmetic` that also writes the training documents.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from olmo2.data.arithmetic import extract_answer, parses, prompt_of
from olmo2.eval.intervals import distribution_baseline, majority_baseline, wilson


@dataclass(frozen=True)
class ArithResult:
    """Exact-match hits and format rate of one model on n held-out problems."""
    n: int
    hits: int
    formatted: int
    example: tuple[str, str] = ("", "")

    @property
    def accuracy(self) -> float:
        return self.hits / self.n

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.hits, self.n)

    @property
    def format_rate(self) -> float:
        return self.formatted / self.n

    def to_dict(self) -> dict:
        return dict(asdict(self), accuracy=self.accuracy, ci=list(self.ci), format_rate=self.format_rate)


@dataclass(frozen=True)
class Baseline:
    """A trivial strategy's (expected) hits on the same held-out problems."""
    name: str
    hits: float
    n: int

    @property
    def accuracy(self) -> float:
        return self.hits / self.n

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.hits, self.n)


def baselines(train: list[dict], heldout: list[dict]) -> list[Baseline]:
    """Majority training answer and answer-distribution guessing, scored on `heldout`."""
    tr = [p["answer"] for p in train]
    te = [p["answer"] for p in heldout]
    hits, answer = majority_baseline(tr, te)
    return [Baseline(f"always answer {answer} (majority training answer)", hits, len(te)),
            Baseline("guess from the training answer distribution (expected)", distribution_baseline(tr, te),
                     len(te))]


@torch.inference_mode()
def arithmetic_generations(model, tokenizer, problems: list[dict], max_new_tokens: int = 48,
                           batch_size: int = 128) -> list[str]:
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


def score(outputs: list[str], problems: list[dict]) -> ArithResult:
    """Exact match (extract_answer == answer) and format rate of generations."""
    if not problems or len(outputs) != len(problems):
        raise ValueError("score: need one output per problem and at least one problem")
    hits = sum(extract_answer(o) == p["answer"] for o, p in zip(outputs, problems))
    formatted = sum(parses(o) for o in outputs)
    return ArithResult(len(problems), hits, formatted, (prompt_of(problems[0]), outputs[0]))


def arithmetic_eval(model, tokenizer, problems: list[dict], **kw) -> ArithResult:
    """Greedy generations on `problems`, scored (see the module docstring)."""
    return score(arithmetic_generations(model, tokenizer, problems, **kw), problems)
