"""Model soup: a uniform or weighted average of checkpoints, tensor by tensor.

    olmo2 soup runs/s2-seed42069/hf runs/s2-seed666/hf runs/s2-seed42/hf --out runs/soup
    olmo2 soup A B --weights 3 1 --out runs/soup          # weights are normalised to sum 1
    soup(["A", "B"], "out", weights=[0.5, 0.5])            # from Python

Inputs are HF directories (config.json + model.safetensors or a sharded index). A training
checkpoint (`step-XXXXXX/` with train_state.json) is first exported to a temporary HF
directory (that path loads one whole model at a time; HF inputs never do).

Memory: every input is opened with the zero-copy `SafetensorsFile` reader (mmap); for each
tensor an fp32 accumulator sums `w_i * tensor_i`, is cast back to the first ingredient's
stored dtype, and joins the current output shard, which is written as soon as it is full.
So peak memory is one output shard (`max_shard_bytes`, default 1 GiB) plus one fp32 tensor,
never a whole model.

Checks: the shape fields of config.json must agree (else a one-line `Olmo2Error` naming
the field and both files), and every ingredient must hold the same tensor names and shapes.
The output directory is written atomically (`atomic_dir`); config.json, generation_config
and tokenizer files are copied from the first ingredient; README.md is a new model card
(olmo2/card.py) naming the ingredients and weights.

Footgun: souping only makes sense for models fine-tuned from one shared parent (the
stage-2 ingredients of one stage-1 checkpoint); the code cannot check that.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import torch

from olmo2.card import model_card
from olmo2.checkpoint import SafetensorsFile, _weight_files, plan_shards, resolve, write_weights
from olmo2.config import ModelConfig
from olmo2.errors import CheckpointError, Olmo2Error
from olmo2.fsio import atomic_dir, scratch_dir
from olmo2.progress import Progress

#: config.json keys that decide tensor shapes and the computation; they must all agree.
SHAPE_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "head_dim", "max_position_embeddings", "rope_theta",
                "rms_norm_eps", "tie_word_embeddings")
COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json")


def normalise_weights(n: int, weights: list[float] | None) -> list[float]:
    """Uniform 1/n, or `weights` scaled to sum 1 (must be n finite values >= 0, sum > 0)."""
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise Olmo2Error(f"--weights: got {len(weights)} weights for {n} checkpoints; give one per checkpoint")
    w = [float(x) for x in weights]
    if any(x < 0 or x != x or x == float("inf") for x in w) or sum(w) <= 0:
        raise Olmo2Error(f"--weights {weights}: weights must be finite, >= 0 and not all 0")
    total = sum(w)
    return [x / total for x in w]


def _read_config(d: Path) -> dict:
    p = d / "config.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{p}: not found; soup needs HF checkpoint directories") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: not valid JSON ({e.msg})") from None


def check_configs(dirs: list[Path]) -> dict:
    """The first config; Olmo2Error if any shape field differs between ingredients."""
    first = _read_config(dirs[0])
    for d in dirs[1:]:
        cfg = _read_config(d)
        for k in SHAPE_FIELDS:
            if first.get(k) != cfg.get(k):
                raise Olmo2Error(f"cannot soup: config.json field {k!r} is {first.get(k)!r} in {dirs[0]} "
                                 f"but {cfg.get(k)!r} in {d}; all ingredients must share one architecture")
    return first


def _open_all(d: Path) -> dict[str, SafetensorsFile]:
    """{tensor name: reader} over a checkpoint's safetensors files."""
    where: dict[str, SafetensorsFile] = {}
    for f in _weight_files(d):
        st = SafetensorsFile(f)
        for name in st.keys():
            where[name] = st
    return where


@contextlib.contextmanager
def _as_hf_dirs(paths: list[str | os.PathLike], out: Path):
    """Resolve inputs to HF dirs, exporting training checkpoints first into a scratch dir
    beside `out` (a killed soup's exports are removed by the next write of `out`)."""
    with contextlib.ExitStack() as stack:
        tmp = None
        dirs = []
        for i, p in enumerate(paths):
            d = Path(p)
            if (d / "train_state.json").exists() and not (d / "config.json").exists():
                from olmo2.train.state import export_hf
                tmp = tmp or stack.enter_context(scratch_dir(out))
                d = export_hf(d, tmp / f"ingredient-{i}")
            else:
                d = resolve(p)
            dirs.append(d)
        yield dirs


def soup(checkpoints: list[str | os.PathLike], out_dir: str | os.PathLike, weights: list[float] | None = None,
         max_shard_bytes: int = 1 << 30, progress: bool = True) -> Path:
    """Write the (weighted) average of `checkpoints` to `out_dir` as an HF directory."""
    if not checkpoints:
        raise Olmo2Error("soup needs at least one checkpoint")
    w = normalise_weights(len(checkpoints), weights)
    out = Path(out_dir)
    with _as_hf_dirs(checkpoints, out) as dirs:
        check_configs(dirs)
        readers = [_open_all(d) for d in dirs]
        names = list(readers[0])
        for d, r in zip(dirs[1:], readers[1:]):
            extra, missing = sorted(set(r) - set(names)), sorted(set(names) - set(r))
            if extra or missing:
                what = f"has extra tensor {extra[0]!r}" if extra else f"lacks tensor {missing[0]!r}"
                raise Olmo2Error(f"cannot soup: {d} {what} compared with {dirs[0]}")
            for n in names:
                if r[n].entries[n][1] != readers[0][n].entries[n][1]:
                    raise Olmo2Error(f"cannot soup: tensor {n!r} has shape {tuple(r[n].entries[n][1])} in {d} "
                                     f"but {tuple(readers[0][n].entries[n][1])} in {dirs[0]}")
        ref = readers[0]
        sizes = [(n, ref[n].entries[n][1].numel() * ref[n].entries[n][0].itemsize) for n in names]
        plan = plan_shards(sizes, max_shard_bytes)
        prog = Progress(len(names), desc="soup", unit="tensor", enabled=progress)

        def averaged(n: str) -> torch.Tensor:
            # fp32 accumulation, cast back to the stored dtype; one tensor at a time
            acc = None
            for wi, r in zip(w, readers):
                t = r[n].get(n).to(torch.float32)
                acc = t * wi if acc is None else acc.add_(t, alpha=wi)
            prog.update(1)
            return acc.to(ref[n].entries[n][0]).contiguous()

        with atomic_dir(out) as tmp:
            write_weights(tmp, plan, averaged)
            for f in COPY_FILES:
                if (dirs[0] / f).exists():
                    shutil.copy2(dirs[0] / f, tmp / f)
            meta = {"ingredients": [str(Path(c)) for c in checkpoints], "weights": w}
            (tmp / "soup.json").write_text(json.dumps(meta, indent=2) + "\n")
            # The average is a new model: it gets its own card (with the risk notice), not a
            # copy of the first ingredient's.
            cfg = ModelConfig.from_json_file(tmp / "config.json")
            (tmp / "README.md").write_text(model_card(
                cfg, description=f"A weight average (model soup) of {len(checkpoints)} OLMo 2 checkpoints.",
                training={"souped from": ", ".join(meta["ingredients"]),
                          "weights": ", ".join(f"{x:.4g}" for x in w)}))
        prog.close()
    return out
