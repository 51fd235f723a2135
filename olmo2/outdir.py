"""The one guard every verb runs on its `--out` before writing anything.

    from olmo2.outdir import check_out
    check_out(args.out, kind="hf", inputs=[args.checkpoint], force=args.force)

Why: a user's `--out` used to be replaced silently, so `olmo2 init --out keep` deleted
`keep/thesis.txt`, `olmo2 export RUN --out RUN` deleted every checkpoint and `soup A B --out A`
replaced its own input. The rules, for every verb that writes a directory:

1. `--out` may not be, contain, or lie inside any input (compared after resolving symlinks):
   writing there would destroy or pollute what the command reads.
2. A missing or empty `--out` is always fine.
3. A non-empty `--out` must be something this package wrote, of the kind the verb writes
   (`KINDS`): an HF checkpoint holding only the files `save_model`/`soup` write; a demo
   corpus holding only what `data demo` writes (it is rebuilt as a whole); an eval run
   holding only results.json and <task>/predictions.jsonl (also replaced whole); a training
   run directory; a token-shard directory; a replication directory. Anything else is refused,
   `--force` or not: we never delete files we did not write.
4. Replacing an existing HF checkpoint (`kind="hf"`) or eval run (`kind="eval"`) needs
   `force=True` (`--force`); the
   replacement is atomic (`olmo2.fsio.atomic_dir`). Run, shard and replication directories
   are not replaced but continued (resume), so they need no flag.

Every refusal is an `OutputError` naming the directory and what to do.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from olmo2.errors import Olmo2Error


class OutputError(Olmo2Error):
    """An output directory would overwrite data the user did not ask to replace."""


# Files save_model / soup / Tokenizer.save write into an HF checkpoint directory.
_HF_FILES = re.compile(r"^(config\.json|generation_config\.json|model\.safetensors|"
                       r"model-\d{5}-of-\d{5}\.safetensors|model\.safetensors\.index\.json|README\.md|"
                       r"tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|chat_template\.jinja|"
                       r"soup\.json|quantization\.json|quant_report\.(md|json))$")
# Files `olmo2 data demo` writes into <cache>/demo (replaced as a whole on a rebuild).
_DEMO_FILES = re.compile(r"^(train\.jsonl|val\.jsonl|manifest\.json|tokenizer\.json)$")
# Entries that mark a training run directory (olmo2 train / olmo2.train.loop.train).
_RUN_MARKERS = re.compile(r"^(recipe\.json|metrics\.jsonl|step-\d{6,}(\.tmp)?)$")
# Entries that mark a token-shard directory (olmo2 data tokenize).
_SHARD_MARKERS = re.compile(r"^(metadata(\.part-\d+-of-\d+)?\.json|f\d{5}(-\d{5})?\..*json|"
                            r"\.olmo2-tokenize\..*)$")
# Entries that mark an `olmo2 trace index` directory.
_TRACE_MARKERS = re.compile(r"^(index\.json|shards)$")
# An `olmo2 eval` run: results.json and one <task>/predictions.jsonl per task (replaced whole).
_EVAL_TASK_DIR = re.compile(r"^[a-z0-9_]+$")
# Entries that mark an `olmo2 replicate` directory.
_REPLICATE_MARKERS = re.compile(r"^(data|stage1|stage2-seed\d+|soup|post|report\.md|results\.json)$")

KINDS = {"hf": "an HF checkpoint", "demo": "a demo corpus", "run": "a training run directory",
         "shards": "a token-shard directory", "replicate": "an olmo2 replicate directory",
         "trace": "an olmo2 trace index", "eval": "an olmo2 eval run directory"}


def _entries(d: Path) -> list[str]:
    # Our own atomic-write temps (".name.XXXX.tmp") say nothing about whose directory it is.
    return [n for n in os.listdir(d) if not (n.startswith(".") and n.endswith(".tmp"))]


def is_hf_checkpoint(d: Path) -> bool:
    """True if `d` holds config.json and nothing but the files our HF writers produce."""
    names = _entries(d)
    return "config.json" in names and all(_HF_FILES.match(n) for n in names)


def _is_ours(d: Path, kind: str) -> bool:
    names = _entries(d)
    if kind == "hf":
        return is_hf_checkpoint(d)
    if kind == "demo":
        return all(_DEMO_FILES.match(n) for n in names)
    if kind == "eval":  # replaced whole, so every entry must be one eval writes
        return "results.json" in names and all(
            n == "results.json" or (_EVAL_TASK_DIR.match(n) and (d / n).is_dir()
                                    and os.listdir(d / n) == ["predictions.jsonl"]) for n in names)
    marker = {"run": _RUN_MARKERS, "shards": _SHARD_MARKERS, "replicate": _REPLICATE_MARKERS,
              "trace": _TRACE_MARKERS}[kind]
    return any(marker.match(n) for n in names)


def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def _overlap(out: Path, inp: Path) -> str | None:
    if out == inp:
        return "is"
    if inp.is_relative_to(out):
        return "contains"
    if out.is_relative_to(inp):
        return "is inside"
    return None


def check_out(out: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike | None] = (),
              force: bool = False, flag: str = "--out") -> Path:
    """Raise OutputError unless writing `kind` to `out` is safe (module docstring); returns out."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    path = Path(os.path.expanduser(str(out)))
    real = _real(path)
    for i in inputs:
        if i is None:
            continue
        how = _overlap(real, _real(i))
        if how:
            raise OutputError(f"{flag} {path} {how} the input {i}; choose an output directory "
                              f"outside every input")
    if not os.path.lexists(path):
        return path
    if not path.is_dir():
        raise OutputError(f"{flag} {path} exists and is not a directory; choose a new directory")
    if not _entries(path):
        return path
    if not _is_ours(path, kind):
        raise OutputError(f"{flag} {path} is not empty and is not {KINDS[kind]} written by olmo2; "
                          f"nothing was written: choose a new or empty directory")
    if kind in ("hf", "eval") and not force:
        what = "a checkpoint" if kind == "hf" else "an eval run"
        raise OutputError(f"{flag} {path} already holds {what}; pass --force to replace it "
                          f"(atomically) or choose another directory")
    return path
