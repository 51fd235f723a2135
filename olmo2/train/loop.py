"""The one training loop (pretrain, anneal, SFT, DPO differ only by TrainConfig and data).

    from olmo2.train.loop import train
    result = train(preset("olmo2-1b"), TrainConfig(), loader, "runs/stage1")
    # many processes:  torchrun --nproc-per-node 8 -m olmo2 train ...   (see train_main)

Data protocol (`data`): any object that is iterable and yields one dict of tensors per
optimizer step, each tensor with B_local = global_batch_size / world_size rows on dim 0
(this rank's rows); for the default LM objective
    input_ids  LongTensor [B_local, T]
    labels     LongTensor [B_local, T]   UNSHIFTED: labels[:, t] = input_ids[:, t] or -100;
                                         the loop shifts (logits[:, :-1] vs labels[:, 1:])
    position_ids, doc_ids [B_local, T]   optional, for packed rows (no cross-document attention)
and, for resume, `state_dict() -> dict` (the position AFTER the last batch handed out;
so no prefetching iterators) and `load_state_dict(dict)` (then `iter()` is called anew).
`olmo2.data.loader.Loader` implements it. Other objectives read other keys.

Objective (`objective=`, default `LMObjective()`; the interface is documented in
olmo2/train/objective.py): per step the loop all-reduces N = Σ_ranks
objective.normaliser(batch), slices every tensor of the batch along dim 0 into micro-batches
of `micro_batch_size` rows, and backpropagates objective.micro_batch(...)[0] / N for each,
so accumulation and world size do not change the gradient. For the LM objective that is
    (Σ CE + z_coeff · Σ logsumexp²) over non-ignored tokens / N_global
where N_global counts the non-ignored target tokens of the whole global batch. Then
global-norm clipping, and an AdamW step unless the loss, a metric or the grad norm is
NaN/Inf (then the step is skipped and logged; `max_consecutive_skips` in a row abort
with an Olmo2Error naming the last good checkpoint). The LR of step n is
schedule.lr(n × tokens_per_step): tokens include the step being taken
(tokens_per_step = global_batch_size × objective.row_tokens(batch)).

Training only some parameters (LoRA, olmo2/post/lora.py): pass `model=` with the frozen
parameters at requires_grad=False; the optimizer holds only trainable ones, checkpoints
hold all. Plug-ins that need the live model (a frozen reference model derived from it,
GRPO rollouts): give the objective and/or the data source a `bind(model)` method; the loop
calls it once after the model is built, sharded and restored, before the first batch.

Hooks: `callbacks` get `on_step_end(state)`, `on_checkpoint(path)`, `on_train_end(result)`;
`eval_hook(model, state) -> dict | None` runs every `eval_every` steps and at the end.
Test-only: env OLMO2_TEST_SIGKILL_AFTER_STEP=k SIGKILLs the process after step k.
The command line (`olmo2 train --recipe ...`, also under torchrun) lives in
olmo2/commands/train_cmds.py and calls `train`.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from olmo2.config import ModelConfig
from olmo2.errors import ConfigError, DataError, Olmo2Error
from olmo2.fsio import exclusive_lock
from olmo2.progress import Progress
from olmo2.train import parallel, state as ckpt
from olmo2.train.config import TrainConfig
from olmo2.train.init import build_model
from olmo2.train.loss import IGNORE_INDEX, chunked_lm_loss_sums, lm_loss_sums  # noqa: F401 (re-export)
from olmo2.train.objective import LMObjective, Objective, micro_batch_loss  # noqa: F401 (re-export)
from olmo2.train.metrics import MetricsLogger, memory_gb, peak_flops
from olmo2.train.optim import adamw_kernel, build_optimizer, set_lr
from olmo2.train.resume import clean_run_temps, clear_run, restore
from olmo2.train.schedule import build_schedule

KILL_ENV = "OLMO2_TEST_SIGKILL_AFTER_STEP"


@dataclass
class TrainState:
    """What callbacks and the eval hook see after each step."""
    step: int
    tokens: int
    loss: float = float("nan")
    z_loss: float = 0.0
    grad_norm: float = float("nan")
    lr: float = 0.0
    skipped: bool = False
    consecutive_skips: int = 0
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    out_dir: Path | None = None
    last_checkpoint: Path | None = None


@dataclass
class TrainResult:
    step: int
    tokens: int
    losses: list[float]                 # CE per step taken in this call (NaN for skipped)
    checkpoints: list[Path]             # complete checkpoints in out_dir at the end
    last_checkpoint: Path | None
    metrics_path: Path
    loss_png: Path | None
    resumed_from: Path | None = None
    model: nn.Module | None = field(default=None, repr=False)


class Callback:
    """Base class for loop plug-ins (eval, checkpoint averaging, ...); override what you need."""

    def on_step_end(self, state: TrainState) -> None: ...

    def on_checkpoint(self, path: Path) -> None: ...

    def on_train_end(self, result: TrainResult) -> None: ...


def _reduce_metrics(sums: dict[str, list], denom: torch.Tensor, device) -> dict[str, float]:
    """Σ over ranks of each metric's [numerator, denominator], then the ratio; a metric
    without a denominator of its own is divided by the step's normaliser (like the loss).
    One all-reduce for all of them; every rank must report the same metric keys."""
    if not sums:
        return {}
    keys = sorted(sums)
    flat = torch.stack([torch.stack([sums[k][0], sums[k][1] if sums[k][1] is not None
                                     else torch.zeros((), device=device, dtype=torch.float64)]) for k in keys])
    flat = parallel.all_reduce_sum(flat)
    return {k: float(flat[i, 0] / (flat[i, 1] if sums[k][1] is not None else denom)) for i, k in enumerate(keys)}


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _done(cfg: TrainConfig, step: int, tokens: int) -> bool:
    return (cfg.max_steps is not None and step >= cfg.max_steps) or \
           (cfg.max_tokens is not None and tokens >= cfg.max_tokens)


def _scalar(t) -> float:
    if hasattr(t, "full_tensor"):  # DTensor grad norm under FSDP2
        t = t.full_tensor()
    return float(t)


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data, out_dir: str | os.PathLike,
          eval_hook: Callable[[nn.Module, TrainState], dict | None] | None = None,
          callbacks: list[Callback] | tuple = (), model: nn.Module | None = None,
          restart: bool = False, objective: Objective | None = None) -> TrainResult:
    """Train (or resume) per train_cfg on `data` (see the module docstring), writing
    checkpoints, metrics.jsonl and loss.png under out_dir. By default the model is built on
    the meta device, sharded, then initialised per shard (`olmo2.train.init.build_model`:
    the same weights as eager OLMo init with cfg.seed); `model` overrides that with a
    ready unwrapped Olmo2 on CPU.

    Rank 0 holds an exclusive lock on out_dir for the whole run (a second `train` into the
    same directory is refused) and first removes what a killed run left (`step-N.tmp`).
    restart=True (`olmo2 train --restart`) deletes out_dir's checkpoints and metrics first
    and starts from step 0; otherwise see olmo2.train.resume for what is resumed."""
    out_dir = Path(out_dir)
    device = parallel.init_distributed()
    lock = contextlib.nullcontext()
    if parallel.rank() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = exclusive_lock(out_dir, f"run directory {out_dir}")
    with lock:
        if parallel.rank() == 0:
            for p in clean_run_temps(out_dir):
                parallel.print0(f"removed {p}, left by an interrupted run")
            for p in (clear_run(out_dir) if restart else ()):
                parallel.print0(f"--restart: deleted {p}")
        parallel.barrier()
        if restart:
            train_cfg = train_cfg.replace(resume=None)
        return _train(model_cfg, train_cfg, data, out_dir, device, eval_hook, callbacks, model,
                      objective or LMObjective())


def _train(model_cfg: ModelConfig, train_cfg: TrainConfig, data, out_dir: Path, device,
           eval_hook, callbacks, model, objective: Objective) -> TrainResult:
    cfg = train_cfg
    rank, world = parallel.rank(), parallel.world_size()
    if cfg.global_batch_size % (world * cfg.micro_batch_size):
        raise Olmo2Error(f"global_batch_size {cfg.global_batch_size} must be a multiple of world_size × "
                         f"micro_batch_size = {world} × {cfg.micro_batch_size}")
    if cfg.seq_len > model_cfg.max_seq_len:
        raise ConfigError(f"train.seq_len {cfg.seq_len} exceeds model.max_seq_len {model_cfg.max_seq_len}; "
                          f"lower train.seq_len or raise model.max_seq_len")
    adamw_kernel(cfg, device)  # refuse fused_adamw off CUDA before building anything
    local_batch = cfg.global_batch_size // world
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    _seed_all(cfg.seed)

    # FLOPs per token from the config: counting parameters would see only local shards
    flop_params = model_cfg.num_params() - model_cfg.vocab_size * model_cfg.d_model  # a lookup costs no matmul
    mode = parallel.resolve_parallel(cfg)
    mesh = parallel.build_mesh(device)
    if model is None:  # meta → shard → init per shard: no rank ever holds the whole model
        model = build_model(model_cfg, cfg, mesh, device)
    else:
        model = parallel.parallelize(model, cfg, mesh, device)
    model.train()
    optimizer = build_optimizer(model, cfg)
    schedule = build_schedule(cfg)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if parallel.use_autocast(cfg, device)
                else contextlib.nullcontext())
    scale = parallel.grad_scale(mode)

    # ---- resume / warm start -----------------------------------------------------
    step = tokens = skips = 0
    resumed, st = restore(cfg, model_cfg, out_dir, model, optimizer)
    if resumed is not None:
        step, tokens, skips = int(st["step"]), int(st["tokens"]), int(st.get("consecutive_skips", 0))
        if st.get("data") is not None:
            if not hasattr(data, "load_state_dict"):
                raise DataError("resuming needs a data source with load_state_dict(); got " + type(data).__name__)
            data.load_state_dict(st["data"])
        parallel.print0(f"resumed from {resumed} (step {step}, {tokens:,} tokens)")
    elif cfg.init_from:
        ckpt.load_checkpoint(cfg.init_from, model, optimizer, full=False)
        parallel.print0(f"warm start from {cfg.init_from}: weights + AdamW moments; fresh schedule and data")

    logger = MetricsLogger(out_dir, enabled=rank == 0, resume_step=step if resumed else None,
                           wandb_project=cfg.wandb_project, tensorboard=cfg.tensorboard,
                           config=cfg.to_dict())
    peak = peak_flops(cfg.peak_flops, device)
    state = TrainState(step=step, tokens=tokens, consecutive_skips=skips, model=model,
                       optimizer=optimizer, out_dir=out_dir, last_checkpoint=resumed)
    kill_at = int(os.environ.get(KILL_ENV, "-1"))
    losses: list[float] = []
    last_saved = step if resumed else None

    def save() -> None:
        nonlocal last_saved
        data_state = data.state_dict() if hasattr(data, "state_dict") else None
        path = ckpt.save_checkpoint(out_dir, step, model, optimizer, data_state=data_state,
                                    train_state={"tokens": tokens, "consecutive_skips": skips},
                                    model_cfg=model_cfg, train_cfg=cfg, keep_last=cfg.keep_last)
        state.last_checkpoint, last_saved = path, step
        logger.plot()
        for cb in callbacks:
            cb.on_checkpoint(path)

    def run_eval() -> None:
        if eval_hook is not None:
            res = eval_hook(model, state)
            model.train()  # the hook may have switched to eval mode
            if res:
                logger.log({"step": step, "tokens": tokens, **{f"eval/{k}": v for k, v in res.items()}})

    # Progress in tokens (total from cfg.seq_len; the batches' T is only known later).
    total = [x for x in (cfg.max_tokens, cfg.max_steps and cfg.max_steps * cfg.global_batch_size * cfg.seq_len)
             if x is not None]
    progress = Progress(max(min(total) - tokens, 1), desc="train", unit="tok", enabled=cfg.progress and rank == 0)
    # Plug-ins that need the live (built, sharded, restored) model: a reference model, rollouts.
    for part in (objective, data):
        if hasattr(part, "bind"):
            part.bind(model)
    it = iter(data)
    try:
        while not _done(cfg, step, tokens):
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                parallel.print0(f"data exhausted after step {step}; stopping")
                break
            if not isinstance(batch, dict):
                raise DataError(f"the data source must yield dicts of tensors (got {type(batch).__name__})")
            objective.check_batch(batch, local_batch)
            T = objective.row_tokens(batch)
            if T > model_cfg.max_seq_len:  # the RoPE table lookup would raise a bare IndexError
                raise DataError(f"batch of {T} tokens per row exceeds model.max_seq_len {model_cfg.max_seq_len}; "
                                f"the data source must yield rows of at most that length (train.seq_len)")
            batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
            step_tokens = cfg.global_batch_size * T
            lr = schedule.lr(tokens + step_tokens)
            set_lr(optimizer, lr)
            n_global = parallel.all_reduce_sum(objective.normaliser(batch).to(torch.float64).reshape(()))
            denom = n_global.clamp(min=1.0)

            # Σ over micro-batches of each metric: [numerator, denominator] in fp64; a plain
            # tensor metric is normalised like the loss (its denominator is added once below).
            sums: dict[str, list] = {}
            n_micro = local_batch // cfg.micro_batch_size
            for i in range(n_micro):
                sl = slice(i * cfg.micro_batch_size, (i + 1) * cfg.micro_batch_size)
                mb = {k: v[sl] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                with parallel.grad_sync(model, mode, sync=i == n_micro - 1):
                    loss_sum, metrics = objective.micro_batch(model, mb, cfg, autocast)
                    ((loss_sum / denom) * scale).backward()
                for k, v in metrics.items():
                    num, den = v if isinstance(v, tuple) else (v, None)
                    acc = sums.setdefault(k, [torch.zeros((), device=device, dtype=torch.float64), None])
                    acc[0] = acc[0] + num.detach().to(torch.float64)
                    if den is not None:
                        acc[1] = (0 if acc[1] is None else acc[1]) + den.detach().to(torch.float64)
                del loss_sum, metrics, mb
            logged = _reduce_metrics(sums, denom, device)
            ce_loss, z_loss = logged.get("loss", float("nan")), logged.get("z_loss", 0.0)
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
            gnorm = _scalar(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            finite = all(math.isfinite(v) for v in logged.values()) and math.isfinite(gnorm)
            if finite:
                optimizer.step()
                skips = 0
            else:
                skips += 1
                parallel.print0(f"step {step + 1}: non-finite loss {ce_loss} / grad norm {gnorm}; "
                                f"skipping the update ({skips} in a row)")
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += step_tokens
            losses.append(ce_loss)

            dt = time.perf_counter() - t0
            tps = step_tokens / dt if dt > 0 else 0.0
            mfu = 6 * flop_params * tps / (peak * world) if peak else None
            state.step, state.tokens, state.loss, state.z_loss = step, tokens, ce_loss, z_loss
            state.grad_norm, state.lr, state.skipped, state.consecutive_skips = gnorm, lr, not finite, skips
            if step % cfg.log_every == 0 or not finite:
                extra = {k: v for k, v in logged.items() if k not in ("loss", "z_loss")}
                logger.log({"step": step, "tokens": tokens, "loss": ce_loss, "z_loss": z_loss,
                            "total_loss": ce_loss + z_loss, **extra, "grad_norm": gnorm, "lr": lr,
                            "tokens_per_s": tps, "mfu": mfu, "mem_gb": memory_gb(device),
                            "skipped": not finite, "time": time.time()})
            progress.update(step_tokens, step=step, loss=ce_loss, lr=lr)
            for cb in callbacks:
                cb.on_step_end(state)
            if skips >= cfg.max_consecutive_skips:
                where = f"the last good checkpoint is {state.last_checkpoint}" if state.last_checkpoint \
                    else "no checkpoint was written"
                raise Olmo2Error(f"training diverged: {skips} consecutive steps with non-finite loss or "
                                 f"grad norm (up to step {step}); {where}; lower lr or check the data")
            if cfg.eval_every and step % cfg.eval_every == 0:
                run_eval()
            if cfg.save_every and step % cfg.save_every == 0 and finite:
                save()
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        if cfg.save_final and last_saved != step and skips == 0:
            save()
        if not (cfg.eval_every and step % cfg.eval_every == 0):
            run_eval()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        progress.close()
        png = logger.plot()
        logger.close()
    result = TrainResult(step=step, tokens=tokens, losses=losses, checkpoints=[p for _, p in ckpt.list_checkpoints(out_dir)],
                         last_checkpoint=state.last_checkpoint, metrics_path=out_dir / "metrics.jsonl",
                         loss_png=png, resumed_from=resumed, model=model)
    for cb in callbacks:
        cb.on_train_end(result)
    return result
