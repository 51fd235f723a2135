"""Post-training recipes (SFT now; DPO/RLVR add their own stage config): typed, overridable.

    from olmo2.post.recipe import get_post_recipe, apply_post_overrides
    r = apply_post_overrides(get_post_recipe("olmo2_1b_sft"), ["train.lr=1e-5", "sft.epochs=1"])

A `PostRecipe` is (name, train: TrainConfig, stage config, notes). The model is not part of
it: post-training starts from a checkpoint (`--model`), whose config is used as is. The
stage config's section name is its `SECTION` ("sft"), so `--set sft.epochs=1` reaches
`SFTConfig.epochs` and `--set train.lr=...` the loop's TrainConfig; the override syntax is
olmo2.recipes' (`section.field=value`).

Schedules: post-training recipes are given in epochs and warmup *ratios* (open-instruct's
terms), while the loop counts tokens. `schedule_for(train, total_steps, warmup_ratio,
row_tokens)` turns them into token units once the data is packed and the step count known:
warmup ceil(ratio × steps) steps, then linear to 0 at the last step. (The loop's LR for step
n is the schedule at the END of step n, the OLMo trainer's convention; HF's scheduler uses
the start, so its first step runs at LR 0 and its last above 0: a one-step shift.)

The recipe functions live with their peers: `olmo2_1b_sft` in olmo2/recipes/olmo2.py,
`tiny_sft` in olmo2/recipes/tiny.py; `POST_RECIPES` registers them here.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from olmo2.errors import ConfigError
from olmo2.train.config import TrainConfig

REDUCE = ("mean", "sum")


@dataclass(frozen=True)
class SFTConfig:
    """What SFT adds to the loop's TrainConfig: epochs, warmup ratio, rendering, packing, reduction."""

    SECTION = "sft"

    epochs: int = 2
    """Passes over the data (the step count follows from the packed rows and the batch)."""
    warmup_ratio: float = 0.03
    """Linear warmup over this fraction of all steps (rounded up), then linear decay to 0."""
    add_bos: bool = True
    """Start every example with <|endoftext|> (open-instruct --add_bos, as the 1B SFT ran)."""
    packing: bool = True
    """Pack several examples per row with document-masked attention (False: one per row, padded)."""
    reduce_loss: str = "mean"
    """mean: each micro-batch's loss is its own token mean and micro-batches are averaged
    (open-instruct's default, which the 1B SFT used; depends on micro_batch_size); sum:
    one mean over every assistant token of the global batch (independent of micro-batching)."""
    data_seed: int = 1
    """Seed of the shuffle before packing (the epoch order uses train.seed + epoch)."""

    def __post_init__(self):
        p = []
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            p.append(f"epochs must be an integer >= 1 (got {self.epochs!r})")
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            p.append(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio!r})")
        if self.reduce_loss not in REDUCE:
            p.append(f"reduce_loss must be one of {REDUCE} (got {self.reduce_loss!r})")
        if isinstance(self.data_seed, bool) or not isinstance(self.data_seed, int) or self.data_seed < 0:
            p.append(f"data_seed must be an integer >= 0 (got {self.data_seed!r})")
        if p:
            raise ConfigError("invalid sft config: " + "; ".join(p))


@dataclass(frozen=True)
class PostRecipe:
    """One post-training stage: the loop's knobs and the stage's own (e.g. SFTConfig)."""

    name: str
    train: TrainConfig
    stage: Any
    notes: str = ""

    def replace(self, **kw) -> "PostRecipe":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return {"name": self.name, "train": self.train.to_dict(),
                self.stage.SECTION: dataclasses.asdict(self.stage), "notes": self.notes}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def schedule_for(train: TrainConfig, total_steps: int, warmup_ratio: float, row_tokens: int) -> TrainConfig:
    """The TrainConfig with a linear warmup/decay-to-0 schedule over `total_steps` steps."""
    step_tokens = train.global_batch_size * row_tokens
    warm = math.ceil(warmup_ratio * total_steps)
    return train.replace(schedule="linear", alpha_f=0.0, warmup_tokens=warm * step_tokens,
                         t_max_tokens=max(total_steps * step_tokens, warm * step_tokens + 1),
                         max_steps=total_steps, max_tokens=None, seq_len=row_tokens)


def apply_post_overrides(recipe: PostRecipe, overrides: list[str] | tuple = ()) -> PostRecipe:
    """`train.FIELD=V` and `<stage>.FIELD=V` overrides (olmo2.recipes syntax)."""
    from olmo2.recipes import _replace_field
    section_name = recipe.stage.SECTION
    for ov in overrides or ():
        where = f"--set {ov}"
        key, eq, raw = ov.partition("=")
        section, _, field = key.strip().partition(".")
        if not eq or not field:
            raise ConfigError(f"{where}: expected section.field=value with section train or {section_name}")
        if section == "train":
            recipe = recipe.replace(train=_replace_field(recipe.train, field, raw, where))
        elif section == section_name:
            recipe = recipe.replace(stage=_replace_field(recipe.stage, field, raw, where))
        else:
            raise ConfigError(f"{where}: unknown section {section!r}; use train or {section_name} "
                              f"(the model comes from --model)")
    return recipe


def _registry() -> dict[str, Callable[[], PostRecipe]]:
    from olmo2.recipes import olmo2 as published
    from olmo2.recipes import tiny
    return {"olmo2_1b_sft": published.olmo2_1b_sft, "tiny_sft": tiny.tiny_sft,
            "olmo2_1b_dpo": published.olmo2_1b_dpo, "tiny_dpo": tiny.tiny_dpo,
            "olmo2_1b_rlvr": published.olmo2_1b_rlvr, "tiny_rlvr": tiny.tiny_rlvr}


def get_post_recipe(name: str, kind: type = SFTConfig) -> PostRecipe:
    """A post-training recipe by name; `kind` is the stage config the verb expects."""
    reg = {k: f for k, f in _registry().items()}
    key = name.replace("-", "_")
    if key not in reg:
        close = difflib.get_close_matches(key, reg, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"--recipe {name!r}: unknown{hint}; choose one of: {', '.join(reg)}")
    r = reg[key]()
    if not isinstance(r.stage, kind):
        raise ConfigError(f"--recipe {name!r} is a {r.stage.SECTION} recipe, not {kind.SECTION}")
    return r


def load_start(model_dir: str, tokenizer: str | None, seq_len: int):
    """(tokenizer, fp32 model) a post-training stage starts from, checked against each other
    and against the recipe's row length (train.seq_len), so a mismatch is a one-line error
    before any data is encoded."""
    import torch

    from olmo2.checkpoint import load_model
    from olmo2.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(tokenizer or model_dir)
    model = load_model(model_dir, dtype=torch.float32)
    mcfg = model.config
    tok.check_fits(mcfg.vocab_size, f"{model_dir} (vocab_size)")
    if seq_len > mcfg.max_seq_len:
        raise ConfigError(f"train.seq_len {seq_len} exceeds the model's max_seq_len {mcfg.max_seq_len}; "
                          f"pass --set train.seq_len={mcfg.max_seq_len} or less")
    return tok, model


def train_and_export(mcfg, train_cfg, data, out, model, objective, tok, export: bool = True,
                     restart: bool = False, **train_kw):
    """Every post-training stage's tail: the one loop, then (rank 0) the last checkpoint as an
    HF directory `out/hf` with the tokenizer. Returns (TrainResult, hf dir or None)."""
    from olmo2.fsio import naming_write_errors
    from olmo2.train import parallel
    from olmo2.train.loop import train
    with naming_write_errors(out, name_any=False):
        res = train(mcfg, train_cfg, data, out, model=model, objective=objective, restart=restart, **train_kw)
    hf = None
    if export and res.last_checkpoint is not None:
        hf = out / "hf"
        if parallel.rank() == 0:
            from olmo2.train.state import export_hf
            export_hf(res.last_checkpoint, hf, tokenizer=tok)
        parallel.barrier()
    return res, hf
