"""`olmo2 dpo`: preference pairs → reference log-probs (cached) → the one loop → HF checkpoint.

    from olmo2.post.dpo_run import run_dpo
    res = run_dpo("runs/sft/hf", ["pairs.jsonl"], "runs/dpo", recipe="tiny_dpo")
    res.hf_dir                      # runs/dpo/hf
    olmo2 dpo --model SFT_MODEL --data pairs.jsonl --out RUN [--recipe olmo2_1b_dpo|tiny_dpo] [--set ...]

Data: JSONL, one pair per line: {"chosen": [messages], "rejected": [messages]} in the HF chat
format (allenai/olmo-2-0425-1b-preference-mix's layout; the two usually share the prompt
turns and differ in the last assistant turn). Both are rendered with the model's chat
template and labelled as SFT labels them (olmo2/post/chat_data.py: assistant tokens only),
truncated to train.seq_len; a pair left with no response tokens on either side is dropped
and counted. Every bad line is reported as `file:line: what`.

Reference log-probs: computed ONCE, before training, with the starting model frozen
(eval mode, no autograd, requires_grad=False), in the reduction the loss uses, and cached in
RUN/ref_logps-<key>.json, where key hashes the data files, the model's weights and config,
the tokenizer, seq_len, add_bos and the loss type: a resumed run reads them back instead of
recomputing, and any change of those inputs computes a new file. (open-instruct's
dpo_tune_cache does the same to keep the reference model out of memory while training.)

Schedule: steps = ⌊pairs / global_batch_size⌋ per epoch (a last partial batch is left out
and reported: padding it with empty pairs would add log 2 per pair to the loss), warmup
ceil(warmup_ratio × steps), then linear to 0, as open-instruct's linear schedule.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from olmo2.errors import ConfigError, DataError
from olmo2.post.dpo import dpo_loss, pair_logps
from olmo2.train.loss import IGNORE_INDEX
from olmo2.train.objective import Objective


@dataclass(frozen=True)
class DPOConfig:
    """What DPO adds to the loop's TrainConfig (`--set dpo.FIELD=...`)."""

    SECTION = "dpo"

    beta: float = 5.0
    """β of the DPO loss (the OLMo 2 1B DPO: 5 with dpo_norm)."""
    loss_type: str = "dpo_norm"
    """dpo_norm: average per-token log-probs (length-normalised, the 1B recipe); dpo: sums."""
    epochs: int = 1
    """Passes over the pairs."""
    warmup_ratio: float = 0.1
    """Linear warmup over this fraction of the steps (rounded up), then linear decay to 0."""
    add_bos: bool = True
    """Start every sequence with <|endoftext|> (open-instruct --add_bos, as the 1B ran)."""
    data_seed: int = 111
    """Seed of the pair order (epoch e uses data_seed + e); the 1B DPO ran with seed 111."""

    def __post_init__(self):
        p = []
        if not isinstance(self.beta, (int, float)) or not self.beta > 0:
            p.append(f"beta must be > 0 (got {self.beta!r})")
        if self.loss_type not in ("dpo_norm", "dpo"):
            p.append(f"loss_type must be dpo_norm or dpo (got {self.loss_type!r})")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            p.append(f"epochs must be an integer >= 1 (got {self.epochs!r})")
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            p.append(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio!r})")
        if p:
            raise ConfigError("invalid dpo config: " + "; ".join(p))


# ---- reading and encoding ----------------------------------------------------------
def read_pairs(sources: list[str]) -> list[tuple[str, list[dict], list[dict]]]:
    """[(`file:line`, chosen, rejected)]; every bad line collected, the first raised."""
    from olmo2.post.chat_data import _check_messages
    from olmo2.post.jsonl import read_jsonl

    def parse(obj, where):
        if not isinstance(obj, dict) or "chosen" not in obj or "rejected" not in obj:
            raise DataError(f"{where}: expected an object with 'chosen' and 'rejected' message lists")
        return (where, _check_messages({"messages": obj["chosen"]}, f"{where}: chosen"),
                _check_messages({"messages": obj["rejected"]}, f"{where}: rejected"))
    return read_jsonl(sources, parse, "pairs",
                      hint="DPO data is JSONL with 'chosen' and 'rejected' message lists")


@dataclass
class EncodedPairs:
    chosen: list[tuple[list[int], list[int]]]      # (ids, labels) per kept pair
    rejected: list[tuple[list[int], list[int]]]
    truncated: int = 0                              # sequences cut to seq_len
    dropped: int = 0                                # pairs left with no response tokens


def encode_pairs(tok, pairs, seq_len: int, add_bos: bool) -> EncodedPairs:
    """Render + label both sides of every pair (SFT's labelling), truncate to seq_len."""
    from olmo2.post.chat_data import encode_example
    enc = EncodedPairs([], [])
    for _, c, r in pairs:
        sides = []
        for msgs in (c, r):
            e = encode_example(tok, msgs, add_bos)
            ids, labels = e.ids, e.labels
            if len(ids) > seq_len:
                enc.truncated += 1
                ids, labels = ids[:seq_len], labels[:seq_len]
            sides.append((ids, labels))
        if any(all(x == IGNORE_INDEX for x in lab[1:]) for _, lab in sides):
            enc.dropped += 1
            continue
        enc.chosen.append(sides[0])
        enc.rejected.append(sides[1])
    if not enc.chosen:
        raise DataError(f"no pair has response tokens left within train.seq_len {seq_len}")
    return enc


def pad_rows(rows: list[tuple[list[int], list[int]]], T: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (ids, labels) rows to T: ids with pad_id, labels with -100."""
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    lab = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        ids[i, :len(a)] = torch.tensor(a)
        lab[i, :len(b)] = torch.tensor(b)
    return ids, lab


def pair_batch(enc: EncodedPairs, idx, pad_id: int, ref: np.ndarray | None = None) -> dict:
    """The DPO batch of pairs `idx`: chosen and rejected padded to one T (their longest)."""
    T = max(max(len(enc.chosen[i][0]), len(enc.rejected[i][0])) for i in idx)
    ci, cl = pad_rows([enc.chosen[i] for i in idx], T, pad_id)
    ri, rl = pad_rows([enc.rejected[i] for i in idx], T, pad_id)
    b = {"chosen_ids": ci, "chosen_labels": cl, "rejected_ids": ri, "rejected_labels": rl}
    if ref is not None:
        b["ref_chosen"] = torch.from_numpy(ref[idx, 0].copy())
        b["ref_rejected"] = torch.from_numpy(ref[idx, 1].copy())
    return b


# ---- reference log-probs --------------------------------------------------------------
def _file_digest(path: Path, h) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)


def cache_key(sources: list[str], model_dir: str | None, model_cfg, tok, seq_len: int, dpo: DPOConfig) -> str:
    """Hash of everything the reference log-probs depend on (module docstring)."""
    h = hashlib.sha256()
    for s in sources:
        h.update(str(Path(s).name).encode() + b"\0")
        _file_digest(Path(s), h)
    if model_dir is not None and Path(model_dir).is_dir():
        for p in sorted(Path(model_dir).glob("*.safetensors")):
            _file_digest(p, h)
    h.update(json.dumps(model_cfg.__dict__ if hasattr(model_cfg, "__dict__") else str(model_cfg),
                        sort_keys=True, default=str).encode())
    h.update(hashlib.sha256(tok.tk.to_str().encode()).digest())
    h.update(f"{seq_len}|{dpo.add_bos}|{dpo.loss_type}".encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def reference_logps(model, enc: EncodedPairs, pad_id: int, average: bool, batch: int = 8,
                    chunk_tokens: int | None = 512, progress: bool = True) -> np.ndarray:
    """[pairs, 2] fp64 (chosen, rejected) sequence log-probs under the frozen `model`."""
    from olmo2.progress import Progress
    was = model.training
    model.eval()
    n = len(enc.chosen)
    out = np.zeros((n, 2), dtype=np.float64)
    bar = Progress(n, desc="reference log-probs", unit="pair", enabled=progress)
    for s in range(0, n, batch):
        idx = list(range(s, min(n, s + batch)))
        c, r = pair_logps(model, pair_batch(enc, idx, pad_id), average, chunk_tokens)
        out[idx, 0], out[idx, 1] = c.double().numpy(), r.double().numpy()
        bar.update(len(idx))
    bar.close()
    model.train(was)
    return out


def load_or_compute_reference(path: Path, compute) -> tuple[np.ndarray, bool]:
    """(reference log-probs, whether they came from the cache file `path`)."""
    from olmo2.fsio import atomic_file
    if path.exists():
        try:
            data = json.loads(path.read_text())
            return np.asarray(data["ref_logps"], dtype=np.float64).reshape(-1, 2), True
        except (ValueError, KeyError, OSError):
            pass  # a damaged cache is recomputed (and rewritten atomically)
    ref = compute()
    with atomic_file(path) as f:
        # repr of a Python float round-trips exactly, so a resumed run sees the same numbers
        json.dump({"ref_logps": [[float(a), float(b)] for a, b in ref]}, f)
    return ref, False


# ---- the loop's objective -------------------------------------------------------------
LOSS_TYPES = ("dpo_norm", "dpo")
KEYS = ("chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels", "ref_chosen", "ref_rejected")


class DPOObjective(Objective):
    """The loop's objective for DPO (see the module docstring)."""

    name = "dpo"

    def __init__(self, beta: float = 5.0, loss_type: str = "dpo_norm", row_tokens: int = 2048):
        if loss_type not in LOSS_TYPES:
            raise DataError(f"dpo.loss_type {loss_type!r}: use one of {', '.join(LOSS_TYPES)}")
        self.beta, self.loss_type = float(beta), loss_type
        # The LR schedule counts tokens (global batch × row tokens). DPO batches are padded
        # to their own longest pair, so the real T varies; a fixed nominal row length keeps
        # the schedule a function of the step alone (olmo2/post/recipe.py schedule_for).
        self._row_tokens = int(row_tokens)

    @property
    def average(self) -> bool:
        return self.loss_type == "dpo_norm"

    def normaliser(self, batch: dict) -> torch.Tensor:
        return torch.tensor(float(batch["chosen_ids"].shape[0]), dtype=torch.float64)

    def row_tokens(self, batch: dict) -> int:
        return self._row_tokens

    def check_batch(self, batch: dict, local_rows: int) -> None:
        missing = [k for k in KEYS if k not in batch]
        if missing:
            raise DataError(f"the DPO objective needs batch keys {', '.join(missing)} (got {sorted(batch)})")
        c, r = batch["chosen_ids"], batch["rejected_ids"]
        if c.shape != r.shape or batch["chosen_labels"].shape != c.shape or batch["rejected_labels"].shape != c.shape:
            raise DataError(f"DPO batch: chosen/rejected ids and labels must share one shape [B, T] "
                            f"(got {tuple(c.shape)} and {tuple(r.shape)})")
        if c.shape[1] > self._row_tokens:
            raise DataError(f"DPO batch of {c.shape[1]} tokens per row exceeds train.seq_len {self._row_tokens}")
        super().check_batch(batch, local_rows)

    def micro_batch(self, model: nn.Module, mb: dict, cfg, autocast):
        pi_c, pi_r = pair_logps(model, mb, self.average, cfg.loss_chunk_tokens, autocast)
        losses, r_c, r_r = dpo_loss(pi_c, pi_r, mb["ref_chosen"], mb["ref_rejected"], self.beta)
        d = losses.detach().double()
        metrics = {"loss": d.sum(), "rewards/chosen": r_c.double().sum(), "rewards/rejected": r_r.double().sum(),
                   "rewards/margin": (r_c - r_r).double().sum(), "rewards/accuracy": (r_c > r_r).double().sum(),
                   "logps/chosen": pi_c.detach().double().sum(), "logps/rejected": pi_r.detach().double().sum()}
        return losses.sum(), metrics


# ---- the loop's data source --------------------------------------------------------------
class PairsData:
    """The loop's data protocol over DPO pairs: `epochs` passes in PCG64(seed + epoch) order,
    ⌊pairs / global_batch_size⌋ full batches each, rows sliced rank::world."""

    def __init__(self, enc: EncodedPairs, ref: np.ndarray, global_batch_size: int, epochs: int, seed: int,
                 pad_id: int, rank: int = 0, world: int = 1):
        self.enc, self.ref, self.gb, self.epochs, self.seed = enc, ref, global_batch_size, epochs, seed
        self.pad_id, self.rank, self.world = pad_id, rank, world
        self.epoch = self.step = 0
        if len(enc.chosen) < global_batch_size:
            raise ConfigError(f"{len(enc.chosen)} pairs are fewer than train.global_batch_size {global_batch_size}; "
                              f"lower it with --set train.global_batch_size=N")

    @property
    def steps_per_epoch(self) -> int:
        return len(self.enc.chosen) // self.gb

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def __iter__(self):
        n = len(self.enc.chosen)
        while self.epoch < self.epochs:
            order = np.random.Generator(np.random.PCG64(self.seed + self.epoch)).permutation(n)
            while self.step < self.steps_per_epoch:
                idx = order[self.step * self.gb:(self.step + 1) * self.gb][self.rank::self.world]
                self.step += 1
                yield pair_batch(self.enc, list(idx), self.pad_id, self.ref)
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.step = int(sd["epoch"]), int(sd["step"])


@dataclass
class DPOResult:
    out_dir: Path
    hf_dir: Path | None
    step: int
    losses: list[float]
    ref_cached: bool
    pairs: int
    dropped: int


def run_dpo(model_dir: str, sources: list[str], out: str | os.PathLike, recipe="tiny_dpo",
            overrides: list[str] | tuple = (), tokenizer: str | None = None, restart: bool = False,
            export: bool = True) -> DPOResult:
    """DPO `model_dir` (an HF dir or hub id) on `sources` into `out` (module docstring)."""
    from olmo2.fsio import atomic_file
    from olmo2.post.recipe import PostRecipe, apply_post_overrides, get_post_recipe, load_start, schedule_for, train_and_export
    from olmo2.train import parallel

    r = recipe if isinstance(recipe, PostRecipe) else get_post_recipe(recipe, DPOConfig)
    r = apply_post_overrides(r, overrides)
    dpo: DPOConfig = r.stage
    out = Path(out)
    pairs = read_pairs(sources)
    seq_len = r.train.seq_len
    tok, model = load_start(model_dir, tokenizer, seq_len)
    mcfg = model.config
    parallel.init_distributed()
    try:
        enc = encode_pairs(tok, pairs, seq_len, dpo.add_bos)
        pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
        # the reference = the starting model, frozen; computed before the policy may change it
        for p in model.parameters():
            p.requires_grad_(False)
        key = cache_key(sources, model_dir, mcfg, tok, seq_len, dpo)
        out.mkdir(parents=True, exist_ok=True)
        ref, cached = load_or_compute_reference(
            out / f"ref_logps-{key}.json",
            lambda: reference_logps(model, enc, pad, dpo.loss_type == "dpo_norm",
                                    chunk_tokens=r.train.loss_chunk_tokens,
                                    progress=r.train.progress and parallel.rank() == 0))
        parallel.print0(f"dpo data: {len(enc.chosen)} pairs ({enc.dropped} dropped, {enc.truncated} sequences "
                        f"truncated to {seq_len}); reference log-probs "
                        + ("read from the cache" if cached else "computed and cached"))
        with torch.no_grad():  # the policy: its own copy of the (memory-mapped) weights, trainable
            for p in model.parameters():
                p.data = p.data.clone()
                p.requires_grad_(True)
        if r.train.global_batch_size % parallel.world_size():
            raise ConfigError(f"train.global_batch_size {r.train.global_batch_size} is not a multiple of the "
                              f"{parallel.world_size()} processes")
        data = PairsData(enc, ref, r.train.global_batch_size, dpo.epochs, dpo.data_seed, pad,
                         rank=parallel.rank(), world=parallel.world_size())
        left = len(enc.chosen) - data.steps_per_epoch * r.train.global_batch_size
        if left:
            parallel.print0(f"dpo: {left} pairs beyond the last full batch are left out of each epoch")
        train_cfg = schedule_for(r.train, data.total_steps, dpo.warmup_ratio, seq_len)
        if parallel.rank() == 0:
            resolved = dict(r.replace(train=train_cfg).to_dict(), base=str(model_dir),
                            data=[str(s) for s in sources], pairs=len(enc.chosen), dropped=enc.dropped,
                            truncated=enc.truncated, ref_cache=f"ref_logps-{key}.json", overrides=list(overrides))
            with atomic_file(out / "recipe.json") as f:
                json.dump(resolved, f, indent=2)
        objective = DPOObjective(dpo.beta, dpo.loss_type, row_tokens=seq_len)
        res, hf = train_and_export(mcfg, train_cfg, data, out, model, objective, tok, export, restart)
        parallel.print0(f"done: step {res.step}; model in {hf}")
        return DPOResult(out, hf, res.step, res.losses, cached, len(enc.chosen), enc.dropped)
    finally:
        parallel.cleanup_distributed()


__all__ = ["DPOConfig", "DPOResult", "run_dpo", "read_pairs", "encode_pairs", "PairsData", "reference_logps"]
