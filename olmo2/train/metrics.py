"""Training metrics: metrics.jsonl (one JSON object per logged step), loss.png, optional
wandb/TensorBoard, plus MFU and memory helpers.

Only rank 0 writes. On resume, lines for steps after the resumed checkpoint (written by
the crashed run) are dropped first, so metrics.jsonl of a resumed run reads exactly like
an uninterrupted one. matplotlib is optional: without it loss.png is skipped with one
warning.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import warnings
from pathlib import Path

import torch

from olmo2.fsio import atomic_file

# Dense bf16 peak FLOP/s per device (no sparsity), for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12, "4090": 165e12}


def peak_flops(cfg_value: float | None, device: torch.device) -> float | None:
    """Config value, else a table lookup of the CUDA device name; None (n/a) on CPU."""
    if cfg_value:
        return float(cfg_value)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, v in PEAK_FLOPS.items():
            if key in name:
                return v
    return None


def memory_gb(device: torch.device) -> float:
    """CUDA max allocated (GB) on GPU, else this process's max RSS (GB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb * 1024 / 1e9


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them readable
    return v


class MetricsLogger:
    """Append-only JSONL metrics (rank 0), optional wandb/tensorboard, and the loss plot."""

    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True, resume_step: int | None = None,
                 wandb_project: str | None = None, tensorboard: bool = False, config: dict | None = None):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "metrics.jsonl"
        self.enabled = enabled
        self._wandb = self._tb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            with atomic_file(self.path) as f:
                f.write("".join(ln + "\n" for ln in keep))
        self._f = open(self.path, "a")
        if wandb_project:
            try:
                import wandb
                self._wandb = wandb.init(project=wandb_project, config=config or {}, dir=str(self.out_dir))
            except ImportError:
                warnings.warn("wandb_project set but wandb is not installed; skipping wandb")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.out_dir / "tb"))
            except ImportError:
                warnings.warn("tensorboard=True but tensorboard is not installed; skipping it")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._f.flush()
        step = record.get("step", 0)
        nums = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._wandb is not None:
            self._wandb.log(nums, step=step)
        if self._tb is not None:
            for k, v in nums.items():
                self._tb.add_scalar(f"train/{k}", v, step)

    def plot(self) -> Path | None:
        """Write loss.png (CE and z-loss vs step) next to the checkpoints; None if no matplotlib."""
        if not self.enabled:
            return None
        return plot_loss(self.path, self.out_dir / "loss.png")

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            if self._wandb is not None:
                self._wandb.finish()
            if self._tb is not None:
                self._tb.close()


_warned = False


def plot_loss(metrics_path: Path, png_path: Path) -> Path | None:
    """Plot `loss` (and `z_loss`) from a metrics.jsonl into a PNG, atomically."""
    global _warned
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned:
            print("warning: matplotlib not installed; skipping loss.png (pip install matplotlib)", file=sys.stderr)
            _warned = True
        return None
    rows = [json.loads(ln) for ln in Path(metrics_path).read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if isinstance(r.get("loss"), (int, float))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="cross-entropy")
    if any(r.get("z_loss") for r in rows):
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in rows], [r.get("z_loss", 0) for r in rows], color="tab:orange", alpha=0.6, label="z-loss")
        ax2.set_ylabel("z-loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return png_path
