"""Which checkpoint a run continues from, and what happens when it does not load.

    resumed, state = restore(train_cfg, model_cfg, out_dir, model, optimizer)

Policy (why: a rerun after a kill must never lose or silently overwrite work):

- `resume="auto"` (the default everywhere, the tiny recipes included): continue from the
  newest complete checkpoint in out_dir. If it is corrupt (a truncated `.distcp`, a broken
  `.metadata`, a damaged JSON file) say which one and why, and fall back to the next older
  one that loads; if none loads, refuse with one line naming the newest.
- The checkpoint's model config (train_config.json) must equal the run's: a changed
  `model.d_model` is reported as that field, both values, before anything is loaded
  (older checkpoints of the same run would not match either, so there is no fallback).
- `resume=PATH`: that checkpoint or a one-line error; no fallback.
- `resume=None` (start fresh) in a directory that already holds checkpoints is refused:
  starting over is `olmo2 train --restart`, which deletes the old checkpoints first
  (`clear_run`), so a fresh run never overwrites `step-N` of an older one step by step.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from olmo2.config import ModelConfig
from olmo2.errors import CheckpointError
from olmo2.fsio import clean_stale_temps
from olmo2.train import parallel, state as ckpt
from olmo2.train.config import TrainConfig


def config_mismatch(path: Path, model_cfg: ModelConfig) -> str | None:
    """'model.FIELD is A in PATH/train_config.json but B now', or None if they agree."""
    stored = ckpt.read_json(path, "train_config.json").get("model")
    if not isinstance(stored, dict):
        return f"{path / 'train_config.json'} holds no model config"
    mine = dataclasses.asdict(model_cfg)
    for k, v in mine.items():
        if k in stored and stored[k] != v and not (isinstance(v, tuple) and list(v) == stored[k]):
            return f"model.{k} is {stored[k]!r} in {path / 'train_config.json'} but {v!r} now"
    return None


def restore(cfg: TrainConfig, model_cfg: ModelConfig, out_dir: Path, model, optimizer) -> tuple[Path | None, dict]:
    """Load the checkpoint to resume from into model/optimizer (all ranks); (path, state)."""
    if cfg.resume is None:
        cks = ckpt.list_checkpoints(out_dir)
        if cks:
            raise CheckpointError(f"{out_dir} already holds checkpoints (newest {cks[-1][1].name}) and "
                                  f"train.resume is None; resume instead (train.resume=auto, the default) "
                                  f"or pass --restart to delete them and start from step 0")
        return None, {}
    if cfg.resume == "auto":
        candidates = [p for _, p in reversed(ckpt.list_checkpoints(out_dir))]
    else:
        p = Path(cfg.resume)
        if not (p / "train_state.json").exists():
            raise CheckpointError(f"resume={cfg.resume}: not a complete checkpoint directory (no train_state.json)")
        candidates = [p]
    first_error = None
    for p in candidates:
        why = config_mismatch(p, model_cfg)
        if why:
            raise CheckpointError(f"cannot resume from {p}: {why}; use the run's config, a new --out, "
                                  f"or --restart")
        try:
            return p, ckpt.load_checkpoint(p, model, optimizer, full=True)
        except CheckpointError as e:
            first_error = first_error or e
            if cfg.resume != "auto":
                raise
            parallel.print0(f"warning: {p} does not load ({e}); trying the previous checkpoint")
    if first_error is not None:
        raise CheckpointError(f"no checkpoint in {out_dir} loads; the newest fails with: {first_error}; "
                              f"delete the damaged ones or pass --restart") from first_error
    return None, {}


def clear_run(out_dir: str | os.PathLike) -> list[Path]:
    """Delete a run's checkpoints, metrics and loss plot (for --restart); what was removed."""
    d = Path(out_dir)
    gone: list[Path] = []
    if not d.is_dir():
        return gone
    for p in sorted(d.iterdir()):
        if ckpt._NAME.match(p.name.removesuffix(".tmp")) and p.is_dir():
            shutil.rmtree(p)
            gone.append(p)
        elif p.name in ("metrics.jsonl", "loss.png") and p.is_file():
            p.unlink()
            gone.append(p)
    gone += clean_stale_temps(d)
    return gone


def clean_run_temps(out_dir: str | os.PathLike) -> list[Path]:
    """Remove leftovers of a killed run in out_dir: `step-N.tmp` checkpoints being written
    and our atomic-write temps. Call on rank 0 while holding the run lock."""
    d = Path(out_dir)
    gone = clean_stale_temps(d) if d.is_dir() else []
    for p in (d.iterdir() if d.is_dir() else ()):
        if p.name.endswith(".tmp") and ckpt._NAME.match(p.name[:-4]) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone
