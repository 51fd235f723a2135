"""The replication report: the checks (computed, with their figures and 95% intervals), the
tables of models, differences and baselines, and the loss-curve PNG.

    text, checks = experiment_report(title, evals, runs, baselines, passages, n_boot, notes,
                                     plot_path="loss_curves.png", stage1_tokens=...)

`evals` maps a model name to `olmo2.replicate.evaluate`'s dict (per-passage NLL and bytes,
per-problem hits); names are "stage 1", "control", "anneal seed S"..., and last the soup.
Each check is PASS only when its interval excludes the null in the claimed direction; a
difference inside the noise is a FAIL ("not shown"), never a pass.

matplotlib is optional: without it the PNG is skipped and the report says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from olmo2.eval.intervals import bpb_ci, fmt_interval, paired_bpb_diff, ratio_ci, wilson


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _pct_ci(est: float, lo: float, hi: float) -> str:
    return f"{_pct(est)} [{_pct(lo)}, {_pct(hi)}]"


def _mean_nll(evals: dict, names: list[str]) -> list[float]:
    return [sum(vals) / len(vals) for vals in zip(*(evals[n]["nll"] for n in names))]


def _acc_diff(a: list[int], b: list[int], n_boot: int) -> tuple[float, float, float]:
    """Paired bootstrap (over problems) of accuracy(a) - accuracy(b)."""
    return ratio_ci([x - y for x, y in zip(a, b)], [1] * len(a), n_boot=n_boot)


def experiment_checks(evals: dict, baselines: list, n_boot: int = 2000) -> tuple[list[Check], list[list[str]]]:
    """The checks and the rows of the differences table (see the module docstring)."""
    names = list(evals)
    anneals = [n for n in names if n.startswith("anneal")]
    soup = names[-1]
    ctl = evals["control"]
    nbytes = ctl["bytes"]
    diffs: list[list[str]] = []
    # (a) bpb: anneal vs control, per ingredient and the soup
    d_bpb = {n: paired_bpb_diff(evals[n]["nll"], ctl["nll"], nbytes, n_boot=n_boot) for n in anneals + [soup]}
    d_acc = {n: _acc_diff(evals[n]["hits"], ctl["hits"], n_boot) for n in anneals + [soup]}
    for n in anneals + [soup]:
        diffs.append([f"{n} − control", fmt_interval(*d_bpb[n]), _pct_ci(*d_acc[n])])
    d_ctl = paired_bpb_diff(ctl["nll"], evals["stage 1"]["nll"], nbytes, n_boot=n_boot)
    a_ctl = _acc_diff(ctl["hits"], evals["stage 1"]["hits"], n_boot)
    diffs.append(["control − stage 1 (more stage-1 training)", fmt_interval(*d_ctl), _pct_ci(*a_ctl)])
    d_soup = paired_bpb_diff(evals[soup]["nll"], _mean_nll(evals, anneals), nbytes, n_boot=n_boot)
    best = min(anneals, key=lambda n: sum(evals[n]["nll"]))
    d_best = paired_bpb_diff(evals[soup]["nll"], evals[best]["nll"], nbytes, n_boot=n_boot)
    diffs.append([f"{soup} − mean of ingredients", fmt_interval(*d_soup), "—"])
    diffs.append([f"{soup} − best ingredient ({best})", fmt_interval(*d_best), "—"])

    top = max(baselines, key=lambda b: b.ci[1])
    beats = {n: wilson(sum(evals[n]["hits"]), len(evals[n]["hits"]))[0] > top.ci[1] for n in anneals + [soup]}

    def acc(n):
        h = evals[n]["hits"]
        return _pct_ci(sum(h) / len(h), *wilson(sum(h), len(h)))

    checks = [
        Check("(a) the anneal lowers validation bpb vs the control arm (same tokens, stage 1 continued)",
              all(d_bpb[n][2] < 0 for n in anneals),
              "; ".join(f"{n} − control {fmt_interval(*d_bpb[n])} bpb" for n in anneals + [soup])
              + " (PASS needs every ingredient's interval below 0)"),
        Check("(b) the anneal raises held-out arithmetic accuracy over the control arm",
              all(d_acc[n][1] > 0 for n in anneals),
              "; ".join(f"{n} − control {_pct_ci(*d_acc[n])}" for n in anneals + [soup])
              + f" (control {acc('control')}; PASS needs every ingredient's interval above 0)"),
        Check("(c) the annealed models' held-out arithmetic beats every trivial baseline",
              all(beats.values()),
              "; ".join(f"{n} {acc(n)}" for n in anneals + [soup])
              + f" vs the strongest baseline, {top.name}: {_pct_ci(top.accuracy, *top.ci)} "
                "(PASS needs each model's lower bound above that baseline's upper bound)"),
        Check("(d) the soup's validation bpb is below the mean of its ingredients'",
              d_soup[2] < 0,
              f"{soup} − mean of ingredients {fmt_interval(*d_soup)} bpb; vs the best ingredient "
              f"{fmt_interval(*d_best)} (PASS needs the first interval below 0)"),
    ]
    return checks, diffs


def experiment_report(title: str, evals: dict, runs: dict, baselines: list, passages: list, n_boot: int,
                      notes: list[str], plot_path: str | Path | None = None,
                      stage1_tokens: int = 0) -> tuple[str, list[Check]]:
    """The Markdown report and its checks."""
    from olmo2.eval.valset import composition
    checks, diffs = experiment_checks(evals, baselines, n_boot)
    out = [f"# {title}", "", "## Checks", ""]
    for c in checks:
        out.append(f"- **{'PASS' if c.passed else 'FAIL'}** {c.name}: {c.detail}")
    out += ["", f"{sum(c.passed for c in checks)}/{len(checks)} checks passed. A FAIL means the effect "
            "was not shown at this scale (its interval includes no effect or the wrong sign).", ""]
    out += ["## Models", "",
            "| model | tokens | final train loss | val bpb [95% CI] | arithmetic exact match [95% CI] "
            "| format rate | wall / CPU time |", "|---|---:|---:|---:|---:|---:|---:|"]
    for n, e in evals.items():
        r = runs.get(n, {})
        tokens = f"{r['tokens']:,}" if r.get("tokens") is not None else "—"
        loss = f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else "—"
        bpb = fmt_interval(*bpb_ci(e["nll"], e["bytes"], n_boot=n_boot))
        a = e["arith"]
        time_ = f"{r['wall_s']:.0f} s" + (f" / {r['cpu_s']:.0f} s" if r.get("cpu_s") is not None else "")
        out.append(f"| {n} | {tokens} | {loss} | {bpb} | {_pct_ci(a['accuracy'], *a['ci'])} | "
                   f"{_pct(a['format_rate'])} | {time_} |")
    out += ["", "## Differences (paired: same passages, same problems)", "",
            "| comparison | Δ val bpb [95% CI] | Δ arithmetic accuracy [95% CI] |", "|---|---:|---:|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in diffs]
    out += ["", "## Trivial arithmetic baselines (same held-out problems)", "",
            "| baseline | accuracy [95% CI] |", "|---|---:|"]
    out += [f"| {b.name} | {_pct_ci(b.accuracy, *b.ci)} |" for b in baselines]
    comp = composition(passages)
    out += ["", "## Validation passages", "", "| source | passages | documents | bytes | share |",
            "|---|---:|---:|---:|---:|"]
    out += [f"| {s} | {c['passages']} | {c['docs']} | {c['bytes']:,} | {_pct(c['share'])} |" for s, c in comp.items()]
    png = None
    if plot_path is not None:
        curves = {n: r["metrics"] for n, r in runs.items() if r.get("metrics")}
        offsets = {n: (stage1_tokens if n.startswith("anneal") else 0) for n in curves}
        png = plot_loss_curves(curves, offsets, plot_path)
    out += ["", "## Loss curves", ""]
    out += [f"![loss curves]({Path(png).name})"] if png else ["(matplotlib is not installed: no PNG)"]
    out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n", checks


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
        # a 10-step running mean: single steps of a 2k-token batch are too noisy to read
        y = [r["loss"] for r in recs]
        k = 10
        ys = [sum(y[max(0, i - k + 1):i + 1]) / len(y[max(0, i - k + 1):i + 1]) for i in range(len(y))]
        ax.plot(x, ys, label=label, linewidth=1)
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("train loss (CE, nats; 10-step mean)")
    ax.set_title("stage 1, then the control (stage 1 continued) and the anneals")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    from olmo2.fsio import atomic_file
    with atomic_file(out_png, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out_png

