"""Guarding a token-shard output directory while `olmo2 data tokenize` writes it.

    with guard_shard_dir(out, settings, shard_index, num_shards):
        ...write shards...

Why: two `tokenize` runs into one --out with different `--shard-tokens` both exited 0 and
left `metadata.json` disagreeing with the shards, and a SIGKILL left whole orphan shard
temps that nothing removed. So, for the duration of a run:

- `.olmo2-tokenize.part-I-of-N.lock` is flocked exclusively: a second run of the same part
  into the same directory is refused at once (`LockedError`). Parts of one job array
  (`--num-shards N --shard-index I`) lock different files and still run side by side.
- `.olmo2-tokenize.json` stores the settings that decide the shards' contents (tokenizer
  sha256, EOS id, text field, --shard-tokens, --num-shards). The first run writes it; any
  later or concurrent run with other settings is refused with one line naming the
  setting, both values and the file. Reading-comparing-writing happens under a short
  blocking lock (`.olmo2-tokenize.lock`) so two parts starting together cannot race.
- temps of killed runs (`.NAME.XXXXXXXX.tmp` that no live writer has locked, see
  `olmo2.fsio.clean_stale_temps`) are removed; live temps of other parts are left alone.

The lock files go away with the process (flock), so a kill never leaves a stale lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from olmo2.errors import DataError
from olmo2.fsio import atomic_file, clean_stale_temps, exclusive_lock

SETTINGS_NAME = ".olmo2-tokenize.json"
_FLAGS = {"tokenizer_sha256": "--tokenizer (its sha256)", "eos_id": "--eos-id", "text_field": "--text-field",
          "shard_tokens": "--shard-tokens", "num_shards": "--num-shards", "format_version": "format version"}


@contextlib.contextmanager
def _short_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: held only while settings are compared
        yield
    finally:
        os.close(fd)


def check_settings(out: Path, settings: dict) -> None:
    """Store `settings` in out/.olmo2-tokenize.json, or DataError if it holds other ones."""
    path = out / SETTINGS_NAME
    with _short_lock(out / ".olmo2-tokenize.lock"):
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DataError(f"{path}: corrupt; delete it (and check {out}'s shards) or use a fresh --out") from None
            for k, v in settings.items():
                if k in stored and stored[k] != v:
                    raise DataError(f"{out} was tokenized with {_FLAGS.get(k, k)} {stored[k]!r} (see {path}), "
                                    f"not {v!r}; rerun with the same settings or use a fresh --out")
            return
        with atomic_file(path) as f:
            json.dump(settings, f, indent=2)


@contextlib.contextmanager
def guard_shard_dir(out: str | os.PathLike, settings: dict, shard_index: int, num_shards: int,
                    progress: bool = True) -> Iterator[None]:
    """Lock part `shard_index` of `out`, check the stored settings, remove stale temps."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / f".olmo2-tokenize.part-{shard_index:05d}-of-{num_shards:05d}.lock"
    with exclusive_lock(lock, f"{out} (part {shard_index} of {num_shards})"):
        check_settings(out, settings)
        for p in clean_stale_temps(out):
            if progress:
                print(f"tokenize: removed {p.name}, left by an interrupted run", file=sys.stderr)
        yield
