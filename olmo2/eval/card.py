"""The repro card: `olmo2 eval report RUN_DIR... --out card.md` (Markdown table + PNG bars).

Each measured run (a directory written by `olmo2 eval`) becomes a row beside the published
OLMo 2 1B instruct-ladder numbers and the three peers the OLMo 2 1B card compares against
(olmo2-facts §6.1, from the OLMo-2-0425-1B and -RLVR1 model cards). Every cell says where it
comes from: "published" or "measured here" with its OLMES setting, n, standard error and,
for GSM8K, the answer-format failure rate. Published numbers were run in chat format
(`gsm8k::tulu`, `truthfulqa::tulu`); a measured `::olmes`/`::olmo1` cell is a different
setting, and the table says so rather than hiding it.

matplotlib is optional: without it the PNG is skipped and the Markdown says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from olmo2.errors import Olmo2Error
from olmo2.fsio import atomic_file


@dataclass(frozen=True)
class Published:
    """A published score (percent) and where it is from."""

    model: str
    gsm8k: float
    truthfulqa: float
    source: str


SOURCE = "OLMo-2-0425-1B / -RLVR1 model cards (OLMES, tulu_3_dev: gsm8k::tulu, truthfulqa::tulu)"
PUBLISHED: tuple[Published, ...] = (
    Published("OLMo 2 1B SFT", 52.1, 42.1, SOURCE),
    Published("OLMo 2 1B DPO", 59.0, 46.4, SOURCE),
    Published("OLMo 2 1B Instruct", 68.3, 48.7, SOURCE),
    Published("Gemma 3 1B", 35.0, 43.8, SOURCE),
    Published("Llama 3.2 1B", 45.4, 41.5, SOURCE),
    Published("Qwen 2.5 1.5B", 66.2, 46.5, SOURCE),
)
COLUMNS = ("gsm8k", "truthfulqa")  # task keys in results.json, in table order


@dataclass(frozen=True)
class Cell:
    """One table cell: a percentage with its provenance."""

    value: float            # percent
    provenance: str         # "published" or "measured here"
    setting: str = ""       # OLMES task name, e.g. gsm8k::olmes
    n: int | None = None
    stderr: float | None = None  # percent
    format_failure: float | None = None  # percent (GSM8K)

    def markdown(self) -> str:
        if self.provenance == "published":
            return f"{self.value:.1f} (published)"
        parts = [f"n={self.n}", f"±{self.stderr:.1f}"]
        if self.format_failure is not None:
            parts.append(f"format fail {self.format_failure:.1f}%")
        return f"**{self.value:.1f}** (measured here, {self.setting}; {', '.join(parts)})"


def load_run(run_dir: Path) -> dict:
    """results.json of a run directory; Olmo2Error if it is not one."""
    p = Path(run_dir) / "results.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise Olmo2Error(f"{run_dir}: no results.json; give directories written by `olmo2 eval --out`") from None
    except json.JSONDecodeError as e:
        raise Olmo2Error(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None


def measured_cells(results: dict) -> dict[str, Cell]:
    """task key -> Cell of its primary metric, in percent."""
    cells = {}
    for key, t in results.get("tasks", {}).items():
        m = t["metrics"][t["primary_metric"]]
        ff = t["metrics"].get("format_failure_rate")
        cells[key] = Cell(100 * m["value"], "measured here", t["task"], m["n"], 100 * m["stderr"],
                          None if ff is None else 100 * ff["value"])
    return cells


def run_label(run_dir: Path, results: dict) -> str:
    return f"{Path(results['model']['path']).name or results['model']['path']} ({Path(run_dir).name})"


def render_card(runs: list[tuple[str, dict[str, Cell]]]) -> str:
    """The Markdown card: measured runs first, then the published rows."""
    extra = sorted({k for _, cells in runs for k in cells} - set(COLUMNS))
    cols = list(COLUMNS) + extra
    head = ["model"] + [{"gsm8k": "GSM8K", "truthfulqa": "TruthfulQA (MC2)"}.get(c, c) for c in cols]
    lines = ["# Evaluation: measured here vs published", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, cells in runs:
        lines.append("| " + " | ".join([label] + [cells[c].markdown() if c in cells else "—" for c in cols]) + " |")
    for p in PUBLISHED:
        vals = {"gsm8k": Cell(p.gsm8k, "published"), "truthfulqa": Cell(p.truthfulqa, "published")}
        lines.append("| " + " | ".join([p.model] + [vals[c].markdown() if c in vals else "—" for c in cols]) + " |")
    lines += ["", f"Published: {SOURCE}. Measured cells: `olmo2 eval`, primary metric in percent "
              "(GSM8K exact match, TruthfulQA MC2), ± one standard error of the mean; the OLMES setting "
              "is named in each cell (`::tulu` = chat format, as published; `::olmes`/`::olmo1` = plain "
              "few-shot, the base-model setting).",
              "Answer-format failure = GSM8K outputs with no extractable number: a low score with a high "
              "failure rate is a formatting problem before it is an arithmetic one.", ""]
    return "\n".join(lines)


def plot_card(runs: list[tuple[str, dict[str, Cell]]], path: Path) -> bool:
    """Grouped bars per model for GSM8K and TruthfulQA; hatched = measured here. False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [(label, cells.get("gsm8k"), cells.get("truthfulqa"), True) for label, cells in runs]
    rows += [(p.model, Cell(p.gsm8k, "published"), Cell(p.truthfulqa, "published"), False) for p in PUBLISHED]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    w = 0.38
    for i, (label, g, t, measured) in enumerate(rows):
        for j, (cell, color) in enumerate(((g, "#4c72b0"), (t, "#dd8452"))):
            if cell is None:
                continue
            ax.bar(i + (j - 0.5) * w, cell.value, w, color=color, hatch="//" if measured else None,
                   edgecolor="black", linewidth=0.5,
                   yerr=cell.stderr if measured else None, capsize=2)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (%)")
    ax.set_title("GSM8K (blue) and TruthfulQA MC2 (orange); hatched = measured here")
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return True


def write_card(run_dirs: list[Path], out_md: Path) -> tuple[Path, Path | None]:
    """Write the Markdown card and its PNG (same stem); return their paths (PNG None if skipped)."""
    runs = []
    for d in run_dirs:
        res = load_run(d)
        runs.append((run_label(d, res), measured_cells(res)))
    png = Path(out_md).with_suffix(".png")
    has_png = plot_card(runs, png)
    text = render_card(runs)
    text += f"\n![scores]({png.name})\n" if has_png else "\n(No chart: matplotlib is not installed.)\n"
    with atomic_file(out_md, "w") as f:
        f.write(text)
    return Path(out_md), png if has_png else None
