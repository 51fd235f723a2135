"""One `olmo2 eval` run: load task data, score with a backend, write results atomically.

    items = load_task_data(["gsm8k", "truthfulqa"], opts)        # fails fast on bad data
    backend = load_backend("native", model_dir)
    run_eval(backend, items, opts, out_dir=Path("runs/eval/soup"), model_info={...})

Output directory (written as a whole, or not at all):

    results.json                 olmo2 version, model path + weights sha256, backend, every
                                 task's metrics (value, stderr, n), settings, dropped shots
    <task>/predictions.jsonl     one record per item: prompt, output or per-choice
                                 log-likelihoods, extracted answer, gold, correct

Determinism: nothing time- or machine-dependent goes into these files (timings go to
stderr), keys are sorted, items keep data order; the same command twice writes identical
bytes.
"""
from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from olmo2.errors import GenerationError, Olmo2Error
from olmo2.eval.task_types import EvalOptions, TaskOutput


@dataclass(frozen=True)
class TaskSpec:
    """A task name users type, how its data is loaded, and how it is run."""

    name: str
    load: Callable[[EvalOptions], object]              # -> items (validated, before the model loads)
    run: Callable[[object, EvalOptions, object], TaskOutput]  # (backend, opts, items)
    about: str


def _gsm8k_load(opts):
    from olmo2.eval.gsm8k import load_items
    return load_items(opts)


def _gsm8k_run(backend, opts, loaded):
    from olmo2.eval.gsm8k import run_gsm8k
    items, source = loaded
    out = run_gsm8k(backend, opts, items)
    out.settings["data"] = source
    return out


def _tqa_load(opts):
    from olmo2.eval.truthfulqa import hf_items, load_truthfulqa
    local = opts.data_dir / "truthfulqa" / "mc_task.json" if opts.data_dir else None
    return load_truthfulqa(local) if local is not None and local.exists() else hf_items()


def _tqa_run(backend, opts, items):
    from olmo2.eval.truthfulqa import run_truthfulqa
    return run_truthfulqa(backend, opts, items)


def _module_spec(name: str, module: str, load_fn: str, run_fn: str, about: str) -> TaskSpec:
    """A task whose code is `olmo2.eval.<module>`: `load_fn(name)` and `run_fn(backend, opts,
    name, data)`, imported on first use (parsing --tasks stays cheap)."""
    def load(opts):
        return getattr(importlib.import_module(f"olmo2.eval.{module}"), load_fn)(name)

    def run(backend, opts, data):
        return getattr(importlib.import_module(f"olmo2.eval.{module}"), run_fn)(backend, opts, name, data)
    return TaskSpec(name, load, run, about)


def _mmlu_load(opts):
    from olmo2.eval.mmlu import load_mmlu
    return load_mmlu()


def _mmlu_run(backend, opts, data):
    from olmo2.eval.mmlu import run_mmlu
    return run_mmlu(backend, opts, data)


TASKS: dict[str, TaskSpec] = {
    "gsm8k": TaskSpec("gsm8k", _gsm8k_load, _gsm8k_run,
                      "GSM8K test, 8-shot CoT, greedy, exact match (gsm8k::olmes; --chat: gsm8k::tulu)"),
    "truthfulqa": TaskSpec("truthfulqa", _tqa_load, _tqa_run,
                           "TruthfulQA MC1/MC2, 6-shot QA primer (truthfulqa::olmo1; --chat: ::tulu)"),
}
# Names match olmo2.eval.tasks_mc.MC_TASKS (not imported here: parsing --tasks stays cheap).
for _t in ("arc_challenge", "arc_easy", "boolq", "csqa", "hellaswag", "openbookqa", "piqa", "socialiqa",
           "sciq", "winogrande"):
    TASKS[_t] = _module_spec(_t, "tasks_mc", "load_mc_task", "run_mc_task",
                             f"{_t}: OLMES RC and MC formats, best of the two (wheel data)")
TASKS["mmlu"] = TaskSpec("mmlu", _mmlu_load, _mmlu_run,
                         "MMLU, 57 subjects, 5-shot from dev, OLMES RC and MC, macro average, best of the two")


# Names match olmo2.eval.bpb_tasks.BPB_TASKS (not imported here: parsing --tasks stays cheap).
for _t in ("gsm8k_bpb", "minerva_math_bpb", "humaneval_bpb", "mbpp_bpb", "lambada_bpb", "squad_bpb",
           "naturalqs_bpb", "drop_bpb", "jeopardy_bpb", "coqa_bpb"):
    TASKS[_t] = _module_spec(_t, "bpb_tasks", "load_bpb_task", "run_bpb_task",
                             f"{_t}: bits per byte of the gold continuation (OLMo's in-loop bpb)")


def parse_tasks(text: str) -> list[str]:
    """Comma-separated task names → list; Olmo2Error naming the unknown ones."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if not names or unknown:
        raise Olmo2Error(f"--tasks: unknown task {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(sorted(TASKS))}")
    return list(dict.fromkeys(names))


def load_task_data(names: list[str], opts: EvalOptions) -> dict[str, object]:
    """Load and validate every task's data before any model is loaded."""
    return {n: TASKS[n].load(opts) for n in names}


def olmo2_version() -> str:
    import olmo2
    return getattr(olmo2, "__version__", "unknown")


def run_eval(backend, data: dict[str, object], opts: EvalOptions, out_dir: Path, model_info: dict) -> dict:
    """Run every task, then write results.json + predictions atomically; return the results dict."""
    from olmo2.fsio import atomic_dir
    outputs: list[tuple[str, TaskOutput]] = []
    for name, items in data.items():
        t0 = time.perf_counter()
        try:
            out = TASKS[name].run(backend, opts, items)
        except GenerationError as e:  # say which task; the backend does not know
            raise GenerationError(f"{name}: {e}") from None
        n = len(out.predictions)
        dt = time.perf_counter() - t0
        print(f"[eval] {out.task}: {out.primary} {out.metric(out.primary).value:.4f} "
              f"(n={n}, {n / dt if dt > 0 else 0:.2f} examples/s, {dt:.1f}s)", file=sys.stderr)
        outputs.append((name, out))
    results = {
        "olmo2_version": olmo2_version(),
        "model": model_info,
        "options": {"limit": opts.limit, "chat": opts.chat, "max_new_tokens": opts.max_new_tokens},
        "tasks": {name: {
            "task": out.task,
            "primary_metric": out.primary,
            "metrics": {m.name: {"value": m.value, "stderr": m.stderr, "n": m.n} for m in out.metrics},
            "n": len(out.predictions),
            "dropped_shot_items": out.dropped_shot_items,
            "settings": out.settings,
            **out.extra,  # task-specific tables, e.g. MMLU's per-subject rows under "subjects"
        } for name, out in outputs},
        "results": [{"task": out.task, "metric": m.name, "value": m.value, "stderr": m.stderr, "n": m.n,
                     "primary": m.name == out.primary} for _, out in outputs for m in out.metrics],
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        for name, out in outputs:
            (tmp / name).mkdir()
            with open(tmp / name / "predictions.jsonl", "w", encoding="utf-8") as f:
                for p in out.predictions:
                    f.write(json.dumps(p, sort_keys=True, ensure_ascii=False) + "\n")
    return results
