"""Fitting a few-shot prompt into the model's context by dropping whole leading shots.

    ctx, dropped = fit_context(lambda drop: build(question, drop), n_shots=8,
                               n_tokens=lambda s: len(backend.encode(s)), budget=max_len - reserve)

OLMES keeps a prompt whole when it fits; when it does not, it removes complete exemplars
from the front (never cuts a shot or the test question in half), so we do the same and
the task records how many items needed it (`dropped_shot_items` in results.json), since a
prompt with fewer shots is a different evaluation.
"""
from __future__ import annotations

from collections.abc import Callable

from olmo2.errors import GenerationError


def fit_context(build: Callable[[int], str], n_shots: int, n_tokens: Callable[[str], int],
                budget: int, what: str = "prompt") -> tuple[str, int]:
    """(context, number of leading shots dropped) for the largest prefix-free context that fits."""
    for drop in range(n_shots + 1):
        ctx = build(drop)
        if n_tokens(ctx) <= budget:
            return ctx, drop
    raise GenerationError(f"{what}: even with all {n_shots} shots dropped the prompt is "
                          f"{n_tokens(build(n_shots))} tokens, over the {budget} the model context allows; "
                          "use a model with a longer context")
