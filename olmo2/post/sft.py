"""Supervised fine-tuning on the one training loop: chat JSONL → packed rows → `train` → HF.

    from olmo2.post.sft import run_sft
    res = run_sft("base_hf_dir", ["chats.jsonl"], "runs/sft", recipe="tiny_sft", lora=LoRAConfig(8))
    res.hf_dir          # runs/sft/hf: a plain HF checkpoint (adapters merged), tokenizer included
    olmo2 sft --model BASE --data chats.jsonl --out runs/sft [--recipe tiny_sft] [--lora 8]

What is SFT-specific is only the data (olmo2/post/chat_data.py: render, assistant-only
labels, packing), the schedule in epochs (olmo2/post/recipe.py) and `SFTObjective` (the LM
objective with open-instruct's `reduce_loss`). The model is the base checkpoint loaded in
fp32 (optionally with LoRA adapters, olmo2/post/lora.py), trained by olmo2.train.loop.train
with its checkpoints, resume after a kill, FSDP2 under torchrun, metrics and loss plot.

The run directory holds recipe.json (the resolved recipe, base model, data files, LoRA,
packing statistics), step-XXXXXX/ training checkpoints, metrics.jsonl, loss.png and, when
training ends, hf/ (the final checkpoint exported, LoRA merged). Rerunning the same command
resumes; a different --lora than the run was started with is refused (the checkpoints hold
that module tree); --restart starts over.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from olmo2.errors import ConfigError
from olmo2.post.chat_data import PackedSFTData, PackStats, encode_example, pack, read_messages
from olmo2.post.lora import LoRAConfig, apply_lora, trainable_parameters
from olmo2.post.recipe import PostRecipe, SFTConfig, apply_post_overrides, get_post_recipe, load_start, schedule_for
from olmo2.train.loss import IGNORE_INDEX
from olmo2.train.objective import LMObjective


class SFTObjective(LMObjective):
    """The LM objective on assistant tokens, reduced as open-instruct's `reduce_loss`.

    sum: Σ token losses / assistant tokens of the global batch (LMObjective unchanged).
    mean: each micro-batch contributes its own token mean, and the step's loss is the mean
    over all micro-batches of all ranks (HF's per-batch mean, divided by the accumulation
    steps and averaged over data-parallel ranks, as open-instruct's finetune.py trains)."""

    name = "sft"

    def __init__(self, reduce_loss: str = "sum", micro_batch_size: int = 1):
        self.reduce_loss, self.micro = reduce_loss, micro_batch_size

    def normaliser(self, batch: dict) -> torch.Tensor:
        if self.reduce_loss == "sum":
            return super().normaliser(batch)
        return torch.tensor(batch["labels"].shape[0] // self.micro, dtype=torch.float64)

    def micro_batch(self, model: nn.Module, mb: dict, cfg, autocast):
        loss, metrics = super().micro_batch(model, mb, cfg, autocast)
        if self.reduce_loss == "sum":
            return loss, metrics
        n = (mb["labels"][:, 1:] != IGNORE_INDEX).sum().clamp(min=1)
        return loss / n, {k: v / n for k, v in metrics.items()}


@dataclass
class SFTResult:
    out_dir: Path
    hf_dir: Path | None
    stats: PackStats
    step: int
    losses: list[float]


def prepare_data(tok, sources: list[str], sft: SFTConfig, seq_len: int, progress: bool = True):
    """(packed rows, stats): read, render + encode with assistant labels, pack."""
    from olmo2.progress import Progress
    examples = read_messages(sources)
    bar = Progress(len(examples), desc="tokenize", unit="ex", enabled=progress)
    encoded = []
    for _, messages in examples:
        encoded.append(encode_example(tok, messages, sft.add_bos))
        bar.update(1)
    bar.close()
    return pack(encoded, seq_len, tok.pad_id, sft.data_seed, packing=sft.packing)


def _check_resume(out: Path, lora: LoRAConfig | None, restart: bool) -> None:
    """Refuse to resume a run with another --lora than it was started with."""
    from olmo2.train.state import list_checkpoints
    f = out / "recipe.json"
    if restart or not f.exists() or not list_checkpoints(out):
        return
    try:
        before = json.loads(f.read_text()).get("lora")
    except (json.JSONDecodeError, OSError):
        return
    now = lora.to_dict() if lora else None
    if before != now:
        raise ConfigError(f"{f}: this run was started with lora {before}, now {now}; pass the same --lora/"
                          f"--lora-alpha to resume, or --restart to start over")


def run_sft(base: str, sources: list[str], out: str | os.PathLike, recipe: str | PostRecipe = "tiny_sft",
            overrides: list[str] | tuple = (), lora: LoRAConfig | None = None, tokenizer: str | None = None,
            restart: bool = False, export: bool = True) -> SFTResult:
    """SFT `base` (an HF dir or hub id) on `sources` into `out` (see the module docstring)."""
    from olmo2.fsio import atomic_file, naming_write_errors
    from olmo2.train import parallel
    from olmo2.train.loop import train

    r = recipe if isinstance(recipe, PostRecipe) else get_post_recipe(recipe, SFTConfig)
    r = apply_post_overrides(r, overrides)
    sft: SFTConfig = r.stage
    out = Path(out)
    _check_resume(out, lora, restart)
    seq_len = r.train.seq_len
    tok, model = load_start(base, tokenizer, seq_len)
    mcfg = model.config
    parallel.init_distributed()
    try:
        rows, stats = prepare_data(tok, sources, sft, seq_len, progress=r.train.progress and parallel.rank() == 0)
        parallel.print0(f"sft data: {stats.line(seq_len)}")
        if r.train.global_batch_size % parallel.world_size():
            raise ConfigError(f"train.global_batch_size {r.train.global_batch_size} is not a multiple of the "
                              f"{parallel.world_size()} processes")
        data = PackedSFTData(rows, r.train.global_batch_size, sft.epochs, seed=r.train.seed,
                             rank=parallel.rank(), world=parallel.world_size(), pad_id=tok.pad_id)
        train_cfg = schedule_for(r.train, data.total_steps, sft.warmup_ratio, seq_len)
        if lora is None:
            # load_model maps the safetensors file and makes those tensors the parameters;
            # full fine-tuning updates them in place, so each gets its own memory first.
            # (With LoRA the frozen base stays mapped: the optimizer never writes it.)
            with torch.no_grad():
                for p in model.parameters():
                    p.data = p.data.clone()
        else:
            apply_lora(model, lora, seed=train_cfg.seed)
            n = trainable_parameters(model)
            parallel.print0(f"lora r={lora.r} alpha={lora.alpha if lora.alpha is not None else 2 * lora.r}: "
                            f"{n['trainable']:,} of {n['total']:,} parameters train")
        if parallel.rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
            resolved = dict(r.replace(train=train_cfg).to_dict(), base=str(base), data=[str(s) for s in sources],
                            lora=lora.to_dict() if lora else None, pack=stats.to_dict(),
                            overrides=list(overrides))
            with atomic_file(out / "recipe.json") as f:
                json.dump(resolved, f, indent=2)
        objective = SFTObjective(sft.reduce_loss, train_cfg.micro_batch_size)
        with naming_write_errors(out, name_any=False):
            res = train(mcfg, train_cfg, data, out, model=model, objective=objective, restart=restart)
        hf = None
        if export and res.last_checkpoint is not None:
            hf = out / "hf"
            if parallel.rank() == 0:
                from olmo2.train.state import export_hf
                export_hf(res.last_checkpoint, hf, tokenizer=tok)
                parallel.print0(f"wrote {hf} from {res.last_checkpoint}"
                                + (" (LoRA merged)" if lora is not None else ""))
            parallel.barrier()
        parallel.print0(f"done: step {res.step}; model in {hf}")
        return SFTResult(out, hf, stats, res.step, res.losses)
    finally:
        parallel.cleanup_distributed()


def lora_from_args(r: int | None, alpha: float | None) -> LoRAConfig | None:
    """--lora R [--lora-alpha A] → LoRAConfig (None without --lora)."""
    if r is None:
        if alpha is not None:
            raise ConfigError("--lora-alpha needs --lora R")
        return None
    return LoRAConfig(r=r, alpha=alpha)


__all__ = ["SFTObjective", "SFTResult", "run_sft", "prepare_data", "lora_from_args"]
