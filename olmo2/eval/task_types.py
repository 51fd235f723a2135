"""The typed results every eval task returns, and the statistics they share.

A task (`olmo2/eval/tasks_*.py`) turns a backend + `EvalOptions` into a `TaskOutput`:
metrics with standard errors and n, one prediction record per item (what
`predictions.jsonl` holds), the exact settings used and how many items had to drop shots.
`olmo2/eval/run.py` writes them; `report.py`/`diff.py` read them back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EvalOptions:
    """What the user asked for, shared by all tasks of a run."""

    limit: int | None = None        # first N items only (quick looks); None = all
    chat: bool = False              # chat-format variants (gsm8k::tulu, truthfulqa::tulu)
    data_dir: Path | None = None    # holds gsm8k/test.jsonl, truthfulqa/mc_task.json
    progress: bool = True           # progress line on stderr
    max_new_tokens: int | None = None  # generation tasks: None = the task's own (GSM8K 512)


@dataclass(frozen=True)
class Metric:
    """One aggregate: mean over n items with the standard error of that mean."""

    name: str
    value: float
    stderr: float
    n: int


@dataclass
class TaskOutput:
    """Everything one task produced."""

    task: str                      # e.g. "gsm8k::olmes"
    primary: str                   # name of the headline metric
    metrics: list[Metric]
    predictions: list[dict]
    settings: dict
    dropped_shot_items: int = 0    # items whose prompt lost leading shots to fit the context
    extra: dict = field(default_factory=dict)

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard error) as lm-eval/OLMES report them (ddof=1; 0 for n<2)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mu = sum(values) / n
    if n < 2:
        return mu, 0.0
    var = sum((v - mu) ** 2 for v in values) / (n - 1)
    return mu, math.sqrt(var / n)


def metric_of(name: str, values: list[float]) -> Metric:
    """A Metric from per-item values."""
    mu, se = mean_stderr(values)
    return Metric(name, mu, se, len(values))


class ExampleProgress:
    """Shows a request-level job in examples: `update(n_requests)` advances the line by the
    examples those requests are worth (choices of one example are scored in length order,
    not example by example, so this is the examples-equivalent rate, with its ETA)."""

    def __init__(self, n_examples: int, n_requests: int, desc: str, enabled: bool = True):
        from olmo2.progress import Progress
        self.inner = Progress(n_examples, desc, "examples", enabled=enabled)
        self.per_request = n_examples / max(n_requests, 1)

    def update(self, n_requests: int = 1) -> None:
        self.inner.update(n_requests * self.per_request)

    def close(self) -> None:
        self.inner.close()
