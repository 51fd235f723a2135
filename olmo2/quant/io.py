"""Quantized checkpoints on disk, and the one load path every verb uses for `--quant`.

    save_quantized(model, "out/")        # after quantize_model(model, ...)
    model = load_model("out/")           # olmo2.checkpoint.load_model sees quantization.json
    model = load_model("fp32-dir/", quant="int4")   # quantize on the fly at load

A quantized checkpoint is an HF-style directory: config.json (the model's own),
generation_config.json, tokenizer files, a model card, `model.safetensors` holding the
*canonical* quantized tensors (olmo2/quant/formats.py: int8/uint8 codes, bf16 scales;
norms in their float dtype) and `quantization.json`:

    {"format": "olmo2-quant", "version": 1, "mode": "int4", "group_size": 128,
     "lm_head": null, "embedding": null,
     "tensors": {"model.layers.0.self_attn.q_proj": {"format": "int4", "group_size": 128},
                 "model.embed_tokens": {"format": "int8", "group_size": null}, ...}}

Loading rebuilds the exact module plan from "tensors", so what was saved is what runs;
every field is checked and a wrong one is a one-line CheckpointError naming
quantization.json and the field. transformers cannot load these directories (its
bitsandbytes/torchao formats differ); `olmo2 export`-style float checkpoints are for that.

Footgun: passing `quant=` for an already-quantized checkpoint is refused unless it names
the stored mode (re-quantizing quantized weights compounds the error).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from olmo2.errors import CheckpointError
from olmo2.quant.swap import MODES, QuantConfig, TensorPlan, empty_module, prepare, swap_modules

META_NAME = "quantization.json"
FORMAT, VERSION = "olmo2-quant", 1
QUANT_CHOICES = ("none", "bf16", "int8", "int4")


def _bad(path: Path, field: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: field {field!r}: {what}; re-run `olmo2 quantize` on the original checkpoint")


def read_meta(d: Path) -> tuple[QuantConfig, dict[str, TensorPlan]]:
    """Parse and check quantization.json: (config, module plan)."""
    path = d / META_NAME
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({type(e).__name__}); "
                              "re-run `olmo2 quantize` on the original checkpoint") from None
    if not isinstance(meta, dict):
        raise _bad(path, "(top level)", "expected a JSON object")
    if meta.get("format") != FORMAT:
        raise _bad(path, "format", f"expected {FORMAT!r}, got {meta.get('format')!r}")
    if meta.get("version") != VERSION:
        raise _bad(path, "version", f"this olmo2 reads version {VERSION}, got {meta.get('version')!r}")
    mode = meta.get("mode")
    if mode not in MODES:
        raise _bad(path, "mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
    gs = meta.get("group_size")
    if not isinstance(gs, int) or isinstance(gs, bool):
        raise _bad(path, "group_size", f"expected an integer, got {gs!r}")
    try:
        cfg = QuantConfig(mode, gs, meta.get("lm_head"), meta.get("embedding")).validated()
    except Exception as e:
        raise _bad(path, "group_size/lm_head/embedding", str(e)) from None
    tensors = meta.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        raise _bad(path, "tensors", "expected an object mapping module names to formats")
    plan = {}
    for name, e in tensors.items():
        field = f"tensors.{name}"
        if not isinstance(e, dict):
            raise _bad(path, field, "expected {\"format\": ..., \"group_size\": ...}")
        fmt, g = e.get("format"), e.get("group_size")
        if fmt not in MODES:
            raise _bad(path, f"{field}.format", f"expected one of {', '.join(MODES)}, got {fmt!r}")
        if fmt == "int4" and g != gs:
            raise _bad(path, f"{field}.group_size", f"int4 tensors use the checkpoint's group size {gs}, got {g!r}")
        if fmt != "int4" and g is not None:
            raise _bad(path, f"{field}.group_size", f"only int4 has a group size, got {g!r}")
        plan[name] = TensorPlan(fmt, g)
    return cfg, plan


def write_meta(d: Path, cfg: QuantConfig, plan: dict[str, TensorPlan]) -> None:
    meta = {"format": FORMAT, "version": VERSION, "mode": cfg.mode, "group_size": cfg.group_size,
            "lm_head": cfg.lm_head, "embedding": cfg.embedding,
            "tensors": {n: {"format": t.fmt, "group_size": t.group_size} for n, t in plan.items()}}
    (d / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")


def is_quantized(d: str | os.PathLike) -> bool:
    return (Path(d) / META_NAME).is_file()


def save_quantized(model, out_dir: str | os.PathLike, tokenizer=None, description: str | None = None) -> Path:
    """Write a quantized model (after `quantize_model`) as a loadable directory, atomically."""
    from olmo2.card import model_card
    from olmo2.checkpoint import _generation_config, plan_shards, write_weights
    from olmo2.fsio import atomic_dir
    plan, cfg = getattr(model, "quant_plan", None), getattr(model, "quant_config", None)
    if plan is None or cfg is None:
        raise ValueError("save_quantized needs a model quantized by olmo2.quant.quantize_model")
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    shards = plan_shards([(k, v.numel() * v.element_size()) for k, v in sd.items()], 5 * 1024**3)
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        hf = model.config.to_hf_dict()
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(_generation_config(model.config), indent=2) + "\n")
        write_weights(tmp, shards, sd.__getitem__)
        write_meta(tmp, cfg, plan)
        if tokenizer is not None:
            tokenizer.save(tmp)
        note = (f"Weights quantized by `olmo2 quantize` ({cfg.mode}"
                + (f", int4 groups of {cfg.group_size}" if cfg.mode == "int4" else "")
                + "); olmo2 loads this directory, transformers does not.")
        (tmp / "README.md").write_text(model_card(model.config, (description + "\n\n" if description else "") + note))
    return out


def _cast_float_params(model, dtype: torch.dtype) -> None:
    """Cast the float *parameters* (norm weights: all that stays unquantized) to `dtype`.
    Not `model.to(dtype)`: that would also cast the bf16 scale buffers."""
    for p in model.parameters():
        if p.dtype.is_floating_point and p.dtype != dtype:
            p.data = p.data.to(dtype)
    from olmo2.quant.linear import _QuantLinear
    for m in model.modules():
        if isinstance(m, _QuantLinear):
            m.compute_dtype = dtype
        elif hasattr(m, "out_dtype"):
            m.out_dtype = dtype


def load_quantized(d: Path, dtype: torch.dtype | None):
    """Load a directory written by `save_quantized` (names, shapes and dtypes all checked)."""
    from olmo2.checkpoint import checked_tensors
    from olmo2.config import ModelConfig
    from olmo2.model import Olmo2
    cfg = ModelConfig.from_json_file(d / "config.json")
    qcfg, plan = read_meta(d)
    with torch.device("meta"):
        model = Olmo2(cfg)
    wanted = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    for name in plan:
        if name not in wanted:
            raise _bad(d / META_NAME, f"tensors.{name}", "not a linear or embedding of this model (config.json)")
    if wanted - set(plan):
        raise _bad(d / META_NAME, "tensors", f"no entry for {sorted(wanted - set(plan))[0]!r}")
    with torch.device("meta"):
        swap_modules(model, plan, empty_module)
    expected = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    from olmo2.checkpoint import is_mapped, page_dropper, tracking_mappings
    from olmo2.quant.linear import _RowTable
    tables = tuple(n + "." for n, m in model.named_modules() if isinstance(m, _RowTable))
    with tracking_mappings():  # to find the table views' mapping again below
        got = {}
        for f, name, t_dtype, st in checked_tensors(d, {k: v[0] for k, v in expected.items()},
                                                    f"not in {META_NAME}'s plan", f"{META_NAME} and config.json imply"):
            want = expected[name][1]
            # Norm weights may be stored in any float dtype; quantized tensors exactly as planned.
            if t_dtype != want and not (want.is_floating_point and t_dtype.is_floating_point and name.endswith("norm.weight")):
                raise CheckpointError(f"{f}: tensor {name!r} has dtype {t_dtype}, {META_NAME} implies {want}")
            # A copy, not the memory map: aten's int8 kernel (_weight_int8pack_mm) segfaulted
            # on a mapped int8 weight at the file's offset (test_quant_checkpoint.py::test_save_load_exact; a fresh buffer is
            # aligned). Quantized weights are small, and each is read once here. Embedding
            # tables are only indexed, never multiplied: they stay views of the file, unmapped
            # after each lookup (0.19 GiB for the 1B's int8 table otherwise).
            t = st.get(name)
            if name.startswith(tables) and t.data_ptr() % t.element_size() == 0:
                got[name] = t
            else:
                got[name] = t.clone()
                # the copy's source pages, read just now, would stay resident as long as the
                # mapping lives, and the table views above keep it alive (+0.72 GiB of file
                # pages for the int4 1B): drop them (a later read would fault them back in)
                st.release(t)
        model.load_state_dict(got, strict=True, assign=True)
        for m in model.modules():  # unmap a table's pages after each lookup (linear.py _RowTable)
            views = [b for b in m.buffers(recurse=False) if is_mapped(b)] if isinstance(m, _RowTable) else []
            if views:
                m.drop_pages(page_dropper(*views))
    del got
    model.quant_plan, model.quant_config = plan, qcfg
    _cast_float_params(model, dtype or torch.float32)
    model.model.rotary.reset_tables()  # built on the CPU at construction (see Rotary._build)
    model.eval()
    return prepare(model)


def load_for_inference(path_or_id, dtype: torch.dtype | None, quant: str | None):
    """The one load behind `--quant` (via olmo2.checkpoint.load_model): a quantized
    directory loads as stored; a float one is quantized on the fly when `quant` asks."""
    from olmo2.checkpoint import load_float, resolve
    quant = None if quant in (None, "none") else quant
    if quant is not None and quant not in QUANT_CHOICES:
        raise CheckpointError(f"--quant {quant!r}: use one of {', '.join(QUANT_CHOICES)}")
    d = resolve(path_or_id)
    if is_quantized(d):
        stored, _ = read_meta(d)
        if quant is not None and quant != stored.mode:
            raise CheckpointError(f"{d / META_NAME}: this checkpoint is already quantized as {stored.mode}; "
                                  f"drop --quant {quant} or pass the original float checkpoint")
        return load_quantized(d, dtype)
    if quant is None:
        return load_float(d, dtype)
    from olmo2.checkpoint import tracking_mappings
    from olmo2.quant.swap import quantize_model
    with tracking_mappings():  # each float weight's pages are dropped once it is quantized
        model = load_float(d, None)  # stored dtype: no fp32 copy of a bf16 checkpoint
        quantize_model(model, quant)
    _cast_float_params(model, dtype or torch.float32)
    return model
