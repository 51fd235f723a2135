"""Training checkpoints: sharded DCP save/load, exact resume, warm start, HF export.

A checkpoint is a directory `out_dir/step-000100/`:

    .metadata, __<rank>_0.distcp   torch.distributed.checkpoint (DCP): model + AdamW state,
                                   each rank writing its own shards (FSDP2 DTensors, or the
                                   whole tensors in a single process: DCP needs no group)
    rank-00000.json ...            per-rank state: data-loader state, torch/numpy/python RNG
                                   (JSON: loading a checkpoint must never unpickle our own
                                   state; older rank-*.pt pickles are refused, not loaded)
    train_config.json              {"model": ModelConfig, "train": TrainConfig}
    train_state.json               step, tokens, world size, ... (written last)

All ranks write into `step-000100.tmp/`; after a barrier rank 0 writes train_state.json and
renames the directory to `step-000100`. So a directory without the `.tmp` suffix is always
complete, and a crash mid-save leaves only a `.tmp` that auto-resume ignores (and the next
save of that step deletes). After the rename rank 0 prunes to the newest `keep_last`.

Model/optimizer state goes through `get_state_dict` / `set_state_dict`, whose FQNs are the
plain `model.layers.0....` names whatever the wrapping (FSDP2, DDP, activation
checkpointing, compile), so a checkpoint written by N ranks loads on M ranks, or into a
plain `Olmo2` on CPU (`load_model_from_checkpoint`, `export_hf`).

Loading goes through `olmo2.train.dcp_safe`: DCP's `.metadata` is a pickle, read with an
allowlisting unpickler, and its byte items with `torch.load(weights_only=True)`, so a
planted payload in a checkpoint does not run. A DCP checkpoint written by another tool
that uses other classes is refused rather than trusted. Any DCP failure (its
`CheckpointException` is a BaseException) becomes one `CheckpointError` naming the
checkpoint; `olmo2.train.resume` then falls back to the newest checkpoint that loads.

Footgun: per-rank data-loader state only restores on the same world size; on a different
one the loader is restored from rank 0's state (correct for loaders whose state is the
global position, like olmo2.data.loader.Loader).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_state_dict)

from olmo2.config import ModelConfig
from olmo2.errors import CheckpointError
from olmo2.fsio import atomic_file, fsync_dir
from olmo2.train import dcp_safe, parallel
from olmo2.train.config import TrainConfig

_NAME = re.compile(r"^step-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in out_dir as (step, path), oldest first (`.tmp` dirs ignored)."""
    out = []
    d = Path(out_dir)
    if not d.is_dir():
        return out
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / "train_state.json").exists():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    cks = list_checkpoints(out_dir)
    return cks[-1][1] if cks else None


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _rng_state() -> dict:
    """This process's torch/numpy/python (and CUDA) RNG states as JSON-able values (exact:
    JSON floats round-trip, the torch states are their bytes in base64)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    st = {"torch": _b64(torch.get_rng_state()),
          "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
          "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        st["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(_unb64(st["torch"]))
    name, keys, pos, has_gauss, gauss = st["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = st["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in st["cuda"]])


def _rank_file(ckpt: Path, r: int) -> Path:
    return ckpt / f"rank-{r:05d}.json"


def _quiet():
    """DCP warns that it runs without a process group; that is intended for one process."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message=".*process group.*")
    warnings.filterwarnings("ignore", message=".*torch.distributed.*(unavailable|uninitialized).*")
    return ctx


def save_checkpoint(out_dir: str | os.PathLike, step: int, model, optimizer, *, train_state: dict,
                    data_state: dict | None, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    keep_last: int | None = None) -> Path:
    """Write out_dir/step-XXXXXX atomically (all ranks call this); returns its path."""
    out_dir = Path(out_dir)
    final = out_dir / checkpoint_name(step)
    tmp = out_dir / (final.name + ".tmp")
    r = parallel.rank()
    if r == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a crash
        tmp.mkdir()
    parallel.barrier()
    msd, osd = get_state_dict(model, optimizer)
    ctx = _quiet()
    try:
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))
    finally:
        ctx.__exit__(None, None, None)
    with atomic_file(_rank_file(tmp, r)) as f:
        json.dump({"data": data_state, "rng": _rng_state()}, f)
    parallel.barrier()
    if r == 0:
        config = {"model": dataclasses.asdict(model_cfg), "train": train_cfg.to_dict()}
        adapters = getattr(parallel.unwrap(model), "adapter_config", None)
        if adapters:  # LoRA (olmo2/post/lora.py): needed to rebuild the module tree on export
            config["lora"] = adapters
        with atomic_file(tmp / "train_config.json") as f:
            json.dump(config, f, indent=2)
        state = dict(train_state, step=step, world_size=parallel.world_size(), saved_at=time.time())
        with atomic_file(tmp / "train_state.json") as f:
            json.dump(state, f, indent=2)
        if final.exists():  # only when a fresh run (resume=None) reaches the same step again
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(out_dir)
        if keep_last:
            # never the one just written, even if an explicit older resume left higher steps
            for _, old in list_checkpoints(out_dir)[:-keep_last]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    parallel.barrier()
    return final


def read_json(ckpt: str | os.PathLike, name: str) -> dict:
    p = Path(ckpt) / name
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{p}: not found; {ckpt} is not a complete training checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: corrupt ({e}); the checkpoint is damaged") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{p}: corrupt (not a JSON object); the checkpoint is damaged")
    return d


def _load_model_optim(ckpt: Path, model, optimizer) -> None:
    # The optimizer was built from THIS run's config; the checkpoint's param groups carry
    # the settings of the run that wrote it (stage 1's weight decay, betas, eps, foreach...).
    # Loading must bring back only the state (moments, step counts), so the groups'
    # hyperparameters are put back as they were after set_state_dict.
    hparams = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    ctx = _quiet()
    try:
        dcp_safe.load(state, ckpt)
    finally:
        ctx.__exit__(None, None, None)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for group, hp in zip(optimizer.param_groups, hparams, strict=True):
        group.update(hp)


def load_checkpoint(ckpt: str | os.PathLike, model, optimizer, *, full: bool = True) -> dict:
    """Load model+optimizer in place (all ranks). full=True (resume) also restores this rank's
    RNG states and returns train_state.json plus "data" (this rank's loader state);
    full=False (warm start, `init_from`) loads only weights and AdamW moments and returns {}.
    Either way the optimizer keeps its own hyperparameters (lr, betas, eps, weight decay per
    group): those come from the config it was built with, not from the checkpoint."""
    ckpt = Path(ckpt)
    state = read_json(ckpt, "train_state.json")
    _load_model_optim(ckpt, model, optimizer)
    if not full:
        return {}
    r = parallel.rank()
    same_world = state.get("world_size") == parallel.world_size()
    p = _rank_file(ckpt, r if same_world else 0)
    if not p.exists() and p.with_suffix(".pt").exists():
        raise CheckpointError(f"{p.with_suffix('.pt')}: per-rank state in the old pickle format, which olmo2 "
                              f"no longer loads (a pickle can run code); resume from a newer checkpoint "
                              f"or start over with --restart")
    extra = read_json(ckpt, p.name) if p.exists() else {}
    if same_world and "rng" in extra:
        _set_rng_state(extra["rng"])
    state["data"] = extra.get("data")
    return state


def load_model_from_checkpoint(ckpt: str | os.PathLike, merge: bool = True):
    """A plain fp32 `Olmo2` on CPU with the checkpoint's full (unsharded) weights.

    A LoRA run's checkpoint ("lora" in train_config.json) is loaded with its adapters and,
    with merge=True, merged into plain weights (W + (alpha/r)·B A).
    Run it in one process (DCP reassembles the shards of any world size)."""
    from olmo2.model import Olmo2
    ckpt = Path(ckpt)
    stored = read_json(ckpt, "train_config.json")
    try:
        cfg = ModelConfig(**stored["model"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt / 'train_config.json'}: no valid model config ({e})") from None
    model = Olmo2(cfg)
    if stored.get("lora"):
        from olmo2.post.lora import LoRAConfig, apply_lora
        apply_lora(model, LoRAConfig.from_dict(stored["lora"]))
    sd = {"model": model.state_dict()}
    ctx = _quiet()
    try:
        dcp_safe.load(sd, ckpt, no_dist=True)
    finally:
        ctx.__exit__(None, None, None)
    model.load_state_dict(sd["model"])
    if merge and getattr(model, "adapter_config", None):
        from olmo2.post.lora import merge_lora
        merge_lora(model)
    return model


def export_hf(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, tokenizer=None,
              dtype: torch.dtype | str | None = None) -> Path:
    """Write a training checkpoint as an HF directory (config.json + safetensors)."""
    from olmo2.checkpoint import save_model
    model = load_model_from_checkpoint(ckpt_dir)
    save_model(model, out_dir, tokenizer=tokenizer, dtype=dtype)
    return Path(out_dir)


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's full state dict on CPU (collective under FSDP2: call on every rank)."""
    return get_state_dict(model, [], options=StateDictOptions(full_state_dict=True, cpu_offload=True))[0]
