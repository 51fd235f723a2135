"""`olmo2 eval diff RUN_A RUN_B`: the items whose outcome differs between two runs.

    result = diff_runs(Path("runs/eval/ours"), Path("olmes_out/task-000-gsm8k-predictions.jsonl"))
    print(format_diff(result))

Either side may be an `olmo2 eval` run directory (all its tasks, matched by task key) or a
single predictions file: ours (`<task>/predictions.jsonl`, key `idx`, field `correct`),
OLMES's `*-predictions.jsonl` (key `doc_id`, `metrics.exact_match` / `acc_raw` /
`mc1`...) or lm-eval's `samples_*.jsonl` (key `doc_id`, `exact_match` / `acc` / `mc1`).
Items are matched by index; only items present in both are compared, and the counts of
unmatched items are reported, since a silent mismatch of item sets is how "the same
benchmark" turns out not to be.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from olmo2.errors import Olmo2Error

# Correctness fields tried in order for files that are not ours.
_SCORE_KEYS = ("correct", "exact_match", "acc", "acc_raw", "mc1", "acc_per_char")


@dataclass
class ItemDiff:
    idx: int
    a_correct: bool
    b_correct: bool
    a_answer: str | None
    b_answer: str | None


@dataclass
class TaskDiff:
    task: str
    n_common: int
    a_only: int
    b_only: int
    a_acc: float
    b_acc: float
    items: list[ItemDiff] = field(default_factory=list)


def _correct(rec: dict, where: str) -> bool:
    for src in (rec, rec.get("metrics") or {}):
        for k in _SCORE_KEYS:
            if k in src and isinstance(src[k], (bool, int, float)):
                return float(src[k]) > 0.5
    raise Olmo2Error(f"{where}: no correctness field ({', '.join(_SCORE_KEYS)}, or metrics.*) in this record")


def _answer(rec: dict) -> str | None:
    for k in ("extracted", "mc1_pred", "pred", "model_answer", "filtered_resps"):
        if k in rec:
            v = rec[k]
            return json.dumps(v) if not isinstance(v, str) and v is not None else v
    return None


def read_predictions(path: Path) -> dict[int, tuple[bool, str | None]]:
    """idx -> (correct, answer) from one predictions file (ours, OLMES or lm-eval)."""
    out = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise Olmo2Error(f"{path}: cannot read ({e.strerror})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise Olmo2Error(f"{path}:{n}: bad JSON ({e.msg})") from None
        key = rec.get("idx", rec.get("doc_id"))
        if not isinstance(key, int):
            raise Olmo2Error(f"{path}:{n}: no integer 'idx' or 'doc_id' to match items by")
        out[key] = (_correct(rec, f"{path}:{n}"), _answer(rec))
    return out


def _sources(p: Path) -> dict[str, Path]:
    """task key -> predictions file for a run dir; {'': file} for a single file."""
    if p.is_dir():
        files = {f.parent.name: f for f in sorted(p.glob("*/predictions.jsonl"))}
        if not files:
            raise Olmo2Error(f"{p}: no <task>/predictions.jsonl; give an `olmo2 eval --out` directory or a file")
        return files
    if p.is_file():
        return {"": p}
    raise Olmo2Error(f"{p}: no such run directory or predictions file")


def diff_runs(a: Path, b: Path, task: str | None = None) -> list[TaskDiff]:
    """Per task present on both sides, the items whose correctness differs."""
    sa, sb = _sources(Path(a)), _sources(Path(b))
    if "" in sa or "" in sb:  # a single file on either side: pair it with the one task (or --task)
        ka = task if task in sa else next(iter(sa)) if len(sa) == 1 else None
        kb = task if task in sb else next(iter(sb)) if len(sb) == 1 else None
        if ka is None or kb is None:
            raise Olmo2Error("comparing a run directory with a single file needs --task TASK")
        pairs = [(task or ka or kb, sa[ka], sb[kb])]
    else:
        common = [k for k in sa if k in sb and (task is None or k == task)]
        if not common:
            raise Olmo2Error(f"the two runs share no task{f' named {task}' if task else ''}")
        pairs = [(k, sa[k], sb[k]) for k in common]
    out = []
    for name, fa, fb in pairs:
        pa, pb = read_predictions(fa), read_predictions(fb)
        common = sorted(set(pa) & set(pb))
        td = TaskDiff(name, len(common), len(set(pa) - set(pb)), len(set(pb) - set(pa)),
                      sum(pa[i][0] for i in common) / max(len(common), 1),
                      sum(pb[i][0] for i in common) / max(len(common), 1))
        td.items = [ItemDiff(i, pa[i][0], pb[i][0], pa[i][1], pb[i][1]) for i in common if pa[i][0] != pb[i][0]]
        out.append(td)
    return out


def format_diff(diffs: list[TaskDiff], max_items: int = 50) -> str:
    """Human-readable summary: per task the accuracy of each side on common items and the flips."""
    lines = []
    for d in diffs:
        a_win = sum(1 for x in d.items if x.a_correct)
        lines.append(f"{d.task or 'predictions'}: {d.n_common} common items (A only {d.a_only}, B only {d.b_only}); "
                     f"A {100 * d.a_acc:.2f}% vs B {100 * d.b_acc:.2f}%; {len(d.items)} differ "
                     f"({a_win} right only in A, {len(d.items) - a_win} right only in B)")
        for x in d.items[:max_items]:
            lines.append(f"  item {x.idx}: A {'right' if x.a_correct else 'wrong'} ({x.a_answer!r}), "
                         f"B {'right' if x.b_correct else 'wrong'} ({x.b_answer!r})")
        if len(d.items) > max_items:
            lines.append(f"  ... {len(d.items) - max_items} more (--max-items)")
    return "\n".join(lines)
