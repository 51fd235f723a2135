"""`olmo2 convert gguf`: a checkpoint → a GGUF file for llama.cpp / ollama, plus a Modelfile.

    olmo2 convert gguf runs/replicate-tiny/soup --out soup.q8_0.gguf --type q8_0
    ollama create soup -f soup.q8_0.Modelfile

Output safety (the file counterpart of olmo2/outdir.py's directory rules): `--out` must be a
`*.gguf` path outside the model directory; an existing file is replaced only if it is a GGUF
(its magic bytes say so) and `--force` is given, and the `.Modelfile` beside it only if we
wrote it. Both are written under temp names and renamed.
"""
from __future__ import annotations

import os
from pathlib import Path

from olmo2.commands import HelpFormatter
from olmo2.errors import Olmo2Error

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")  # olmo2.convert.gguf_export.GGUFType, without importing it


def register(sub) -> None:
    """Add `convert gguf` to the top-level CLI."""
    conv = sub.add_parser("convert", help="convert a checkpoint to another runtime's format (GGUF)",
                          formatter_class=HelpFormatter,
                          description="Convert an OLMo 2 HF checkpoint for other runtimes.",
                          epilog="example:\n  olmo2 convert gguf runs/replicate-tiny/soup --out soup.gguf")
    csub = conv.add_subparsers(dest="convert_cmd", metavar="VERB", required=True)
    p = csub.add_parser(
        "gguf", help="write a GGUF file (llama.cpp's olmo2 architecture) and an ollama Modelfile",
        formatter_class=HelpFormatter,
        description="Write MODEL as one GGUF file that llama.cpp (and so ollama, LM Studio, "
                    "llama-cpp-python) loads as its `olmo2` architecture: weights in the chosen "
                    "precision (norms stay f32), the tokenizer as a gpt2-type BPE vocabulary with "
                    "the matching pre-tokenizer, EOS/pad ids, no automatic BOS, and the chat "
                    "template. An ollama Modelfile (template, stop tokens, num_ctx) is written "
                    "beside it as FILE with the suffix .Modelfile.",
        epilog="example:\n  olmo2 convert gguf runs/replicate-tiny/soup --out soup.gguf\n"
               "  olmo2 convert gguf allenai/OLMo-2-0425-1B --out olmo2-1b.q4_0.gguf --type q4_0\n"
               "  ollama create olmo2-1b -f olmo2-1b.q4_0.Modelfile && ollama run olmo2-1b")
    p.add_argument("model", metavar="MODEL", help="checkpoint directory or hub id")
    p.add_argument("--out", required=True, help="the .gguf file to write (atomically)")
    p.add_argument("--type", choices=TYPES, default="f32",
                   help="precision of the 2-D weights: f32 (exact), f16, bf16, q8_0, q4_0 "
                        "(q4_0 keeps the LM head at q8_0)")
    p.add_argument("--ctx", type=int, default=None,
                   help="num_ctx in the Modelfile (default: the model's context, at most 4096)")
    p.add_argument("--force", action="store_true", help="replace an existing GGUF at --out")
    p.set_defaults(func=run_gguf)


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def check_gguf_out(out: Path, model_dir: Path, force: bool) -> Path:
    """Refuse an --out that would destroy something (module docstring); returns the Modelfile path."""
    from olmo2.convert.modelfile import is_ours, modelfile_path
    from olmo2.outdir import OutputError
    if out.suffix != ".gguf":
        raise OutputError(f"--out {out}: name the file *.gguf (the Modelfile goes beside it as *.Modelfile)")
    real_out, real_model = Path(os.path.realpath(out)), Path(os.path.realpath(model_dir))
    if real_out.is_relative_to(real_model):
        raise OutputError(f"--out {out} is inside the model directory {model_dir}; write it elsewhere")
    mf = modelfile_path(out)
    if os.path.lexists(out):
        if out.is_dir() or not _is_gguf(out):
            raise OutputError(f"--out {out} exists and is not a GGUF file; nothing was written: choose a new name")
        if not force:
            raise OutputError(f"--out {out} already exists; pass --force to replace it (atomically)")
    if os.path.lexists(mf) and not (force and is_ours(mf)):
        raise OutputError(f"{mf}: exists and was not written by `olmo2 convert gguf` (or --force is missing); "
                          "move it or choose another --out")
    return mf


def run_gguf(args) -> int:
    from olmo2.checkpoint import resolve
    from olmo2.convert.gguf_export import GGUFType, export_gguf
    from olmo2.convert.modelfile import modelfile_text
    from olmo2.fsio import atomic_file

    try:
        import gguf  # noqa: F401
    except ModuleNotFoundError:
        raise Olmo2Error("convert gguf: needs the `gguf` package; pip install 'olmo2[gguf]'") from None
    out = Path(os.path.expanduser(args.out))
    model_dir = resolve(args.model)
    mf = check_gguf_out(out, model_dir, args.force)
    if args.ctx is not None and args.ctx < 1:
        raise Olmo2Error(f"--ctx {args.ctx}: must be a positive number of tokens")
    plans = export_gguf(model_dir, out, GGUFType(args.type))
    from olmo2.config import ModelConfig
    cfg = ModelConfig.from_json_file(model_dir / "config.json")
    with atomic_file(mf, "w") as f:
        f.write(modelfile_text(out, args.ctx or min(cfg.max_seq_len, 4096)))
    size = out.stat().st_size
    print(f"wrote {out} ({args.type}, {len(plans)} tensors, {size / 1e6:.1f} MB) and {mf}")
    return 0
