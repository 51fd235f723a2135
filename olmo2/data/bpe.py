"""A small byte-level BPE tokenizer in the style of dolma2 (the OLMo 2 tokenizer), for demos.

dolma2 has a 100k vocabulary, which dominates a tiny model's parameters and CPU time, so the
demo trains its own small vocabulary with exactly dolma2's text pipeline:

- pre-tokenizer: a `Split` on the cl100k regex (keep the matches: behavior "removed",
  invert true, exactly as in dolma2's tokenizer.json), then `ByteLevel(add_prefix_space=False,
  use_regex=False)`;
- ByteLevel decoder, no normalizer, no post-processor (nothing, not even BOS, is added);
- all 256 byte symbols are in the base alphabet, so every string round-trips exactly;
- special tokens sit at the END of the vocabulary, as in dolma2 (regular tokens first, then
  `<|endoftext|>` = eos / optional chat BOS, then `<|pad|>`).

Run: `train_bpe(texts, vocab_size=8192, out_path=Path("tokenizer.json"))`; `olmo2 data demo`
calls it on the demo train split.

Footguns: `vocab_size` counts the special tokens. A tiny training text may not support that
many merges; the vocabulary is then smaller and the special ids move down with it, so always
read ids with `special_token_ids()` instead of hard-coding them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from olmo2.errors import DataError, Olmo2Error
from olmo2.fsio import atomic_file

# The cl100k pre-tokenization regex used by dolma2 (contractions, letters with one leading
# non-letter, numbers in groups of up to 3 digits, punctuation runs, newlines, spaces).
DOLMA2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)  # appended in this order after the regular vocab


def dolma2_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """The dolma2 pre-tokenizer: cl100k regex split, then byte-level mapping without a regex."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(DOLMA2_SPLIT_REGEX), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def new_tokenizer() -> Tokenizer:
    """An untrained dolma2-style BPE tokenizer (model, pre-tokenizer, decoder; nothing else)."""
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = dolma2_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, *, out_path: Path,
              min_frequency: int = 2, length: int | None = None) -> Path:
    """Train a dolma2-style byte-level BPE on `texts` and atomically write tokenizer.json."""
    n_special = len(SPECIAL_TOKENS)
    n_bytes = len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < n_bytes + n_special:
        raise DataError(f"--vocab-size {vocab_size} is too small: need at least "
                        f"{n_bytes + n_special} (256 bytes + {n_special} special tokens)")
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_special, min_frequency=min_frequency, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    # Added after training so they get the highest ids, like dolma2.
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    out_path = Path(out_path)
    with atomic_file(out_path, "w") as f:
        f.write(tok.to_str(pretty=False))
    return out_path


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens a training/inference loop needs."""

    eos: int
    pad: int
    vocab_size: int  # total, including the special tokens


def special_token_ids(tokenizer_json: Path) -> SpecialIds:
    """eos/pad ids and vocab size of a tokenizer.json (demo BPE or the real dolma2 file)."""
    from olmo2.tokenizer import Tokenizer as Olmo2Tokenizer  # the one loading path
    path = Path(tokenizer_json)
    try:
        tok = Olmo2Tokenizer.from_file(path)
    except Olmo2Error as e:
        raise DataError(f"{e}; re-run `olmo2 data demo` or use a dolma2-style tokenizer") from None
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise DataError(f"{path}: has no {', '.join(missing)} token; use a dolma2-style tokenizer")
    return SpecialIds(eos=tok.eos_id, pad=tok.pad_id, vocab_size=tok.vocab_size)


def pre_tokenizer_json(tokenizer_json: Path) -> dict:
    """The `pre_tokenizer` section of a tokenizer.json (to compare with dolma2's)."""
    return json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))["pre_tokenizer"]
