"""The replication report: one Markdown table row per stage, the pass/fail checks, and the
loss-curve PNG (stage 1 followed by every stage-2 ingredient on one token axis).

    rows = [StageRow("stage 1", tokens, loss, bpb, acc, wall_s), ...]
    text = render_markdown(rows, checks, title=..., notes=[...])
    plot_loss_curves({"stage 1": run1/metrics.jsonl, ...}, offsets, "loss_curves.png")

matplotlib is optional: without it the PNG is skipped and the report says so.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class StageRow:
    """One evaluated model of the pipeline."""
    stage: str
    tokens: int | None           # training tokens of this stage (None: not trained, e.g. the soup)
    train_loss: float | None     # mean CE of the stage's last steps
    val_bpb: float
    arith_acc: float
    wall_s: float | None
    model_dir: str = ""


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def _f(v, fmt: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def render_markdown(rows: list[StageRow], checks: list[Check], title: str = "Replication report",
                    notes: list[str] = (), images: list[str] = ()) -> str:
    """The report as Markdown."""
    out = [f"# {title}", ""]
    out += ["| stage | tokens | final train loss | val bpb | arithmetic acc | wall time |",
            "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        tokens = f"{r.tokens:,}" if r.tokens is not None else "—"
        wall = f"{r.wall_s:.0f} s" if r.wall_s is not None else "—"
        out.append(f"| {r.stage} | {tokens} | {_f(r.train_loss, '.3f')} | {_f(r.val_bpb, '.4f')} | "
                   f"{_f(r.arith_acc * 100 if r.arith_acc is not None else None, '.1f')}% | {wall} |")
    out += ["", "## Checks", ""]
    for c in checks:
        out.append(f"- **{'PASS' if c.passed else 'FAIL'}** {c.name}: {c.detail}")
    n_pass = sum(c.passed for c in checks)
    out += ["", f"{n_pass}/{len(checks)} checks passed."]
    if images:
        out += ["", "## Loss curves", ""] + [f"![loss curves]({p})" for p in images]
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def read_metrics(path: str | Path) -> list[dict]:
    """Step records (those with a loss) of a metrics.jsonl."""
    recs = []
    p = Path(path)
    if not p.exists():
        return recs
    for line in p.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            if isinstance(d.get("loss"), (int, float)):
                recs.append(d)
    return recs


def final_loss(path: str | Path, last: int = 10) -> float | None:
    """Mean CE of the last `last` logged steps (a single step is too noisy to report)."""
    recs = read_metrics(path)[-last:]
    return sum(r["loss"] for r in recs) / len(recs) if recs else None


def plot_loss_curves(curves: dict[str, str | Path], offsets: dict[str, int], out_png: str | Path) -> Path | None:
    """Train loss vs cumulative tokens, one line per stage; None if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, path in curves.items():
        recs = read_metrics(path)
        if not recs:
            continue
        x = [(offsets.get(label, 0) + r["tokens"]) / 1e6 for r in recs]
        y = [r["loss"] for r in recs]
        ax.plot(x, y, label=label, linewidth=1)
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("train loss (CE, nats)")
    ax.set_title("OLMo 2 tiny replication: stage 1 then stage-2 anneals")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    from olmo2.fsio import atomic_file
    with atomic_file(out_png, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out_png
