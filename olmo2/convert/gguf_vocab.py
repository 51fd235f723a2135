"""A dolma2-style tokenizer as llama.cpp's GGUF vocabulary (`tokenizer.ggml.*` metadata).

    vocab = gguf_vocab(Tokenizer.from_pretrained(model_dir), n_vocab=cfg.vocab_size)
    add_vocab(writer, vocab)

What llama.cpp needs to tokenize exactly as the `tokenizers` library does:

- `tokenizer.ggml.model = "gpt2"`: byte-level BPE. Tokens are stored as they appear in
  tokenizer.json (byte-level unicode, e.g. "Ġthe"), merges as "left right" strings.
- `tokenizer.ggml.pre`: llama.cpp does not read the pre-tokenizer from the file; it picks a
  hard-coded regex by this *name*. dolma2 splits with the cl100k regex and then maps bytes
  without a second regex. llama.cpp's HF converter recognises such tokenizers (the cl100k
  family) by hashing the tokens of a probe text and names them "dbrx", whose regex is the
  cl100k one (with `(?i:'s|...)` spelled out as `'[sS]|...`); "llama-bpe"/"llama3" use the
  same regex but also switch on `ignore_merges` and an automatic BOS, which dolma2 does not
  do. So we detect the pre-tokenizer from its JSON (not a hash, so the small demo BPE, which
  has exactly dolma2's pipeline but other tokens, maps too) and name it "dbrx". Plain GPT-2
  byte-level (ByteLevel with its own regex) maps to "gpt-2". Anything else is refused: a
  GGUF with a wrong pre-tokenizer name loads and runs but tokenizes differently.
- Token types: added tokens that tokenizer.json marks special are CONTROL (llama.cpp never
  prints them and only parses them from text when asked to); other added tokens are
  USER_DEFINED (always parsed as one token, as `tokenizers` does); the rest NORMAL.
  Embedding rows beyond the tokenizer (dolma2: 100278 ids, 100352 rows) become `[PAD<i>]`
  tokens of type UNUSED, because llama.cpp requires one token per embedding row.
- EOS = `<|endoftext|>` (100257 in dolma2), pad = `<|pad|>` (100277); BOS is recorded as the
  same token as EOS (what the HF tokenizer_config says, and what Jinja templates that start
  with `{{ bos_token }}` need) but `add_bos_token` is false: OLMo 2 prepends nothing.
- The chat template: the checkpoint's own Jinja, else our tulu template (olmo2/tokenizer.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from olmo2.errors import CheckpointError
from olmo2.tokenizer import CHAT_TEMPLATE, CHAT_TEMPLATE_BOS, Tokenizer

# dolma2's pre-tokenizer regex (cl100k's); see olmo2/data/bpe.py, which trains with it.
CL100K_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# gguf.TokenType values (kept as ints so this module imports without `gguf`).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class GGUFVocab:
    """Everything `tokenizer.ggml.*` holds for one tokenizer."""

    pre: str
    """llama.cpp's pre-tokenizer name ("dbrx" for dolma2-style, "gpt-2")."""
    tokens: list[str]
    """One per embedding row: the tokenizer's tokens, then `[PAD<i>]` fillers."""
    token_types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int
    pad_id: int
    chat_template: str


def _is_byte_level(pt: dict | None) -> bool:
    return isinstance(pt, dict) and pt.get("type") == "ByteLevel"


def pre_tokenizer_name(tj: dict, source: str) -> str:
    """llama.cpp's name for the pre-tokenizer of tokenizer.json `tj` (module docstring)."""
    pt = tj.get("pre_tokenizer")
    if isinstance(pt, dict) and pt.get("type") == "Sequence":
        steps = pt.get("pretokenizers") or []
        if (len(steps) == 2 and steps[0].get("type") == "Split"
                and (steps[0].get("pattern") or {}).get("Regex") == CL100K_REGEX
                and steps[0].get("behavior") == "Removed" and steps[0].get("invert") is True
                and _is_byte_level(steps[1]) and steps[1].get("use_regex") is False
                and not steps[1].get("add_prefix_space")):
            return "dbrx"
    if _is_byte_level(pt) and pt.get("use_regex", True) and not pt.get("add_prefix_space"):
        return "gpt-2"
    kind = pt.get("type") if isinstance(pt, dict) else pt
    raise CheckpointError(
        f"{source}: pre_tokenizer {kind!r} is not one llama.cpp has a name for (supported: dolma2's "
        "cl100k Split + ByteLevel, or GPT-2 ByteLevel); a GGUF would tokenize differently, so none is written")


def _merges(model: dict, source: str) -> list[str]:
    out = []
    for m in model.get("merges") or []:
        # tokenizers >= 0.20 writes [left, right] pairs, older files "left right" strings.
        pair = m.split(" ") if isinstance(m, str) else m
        if len(pair) != 2 or not all(isinstance(p, str) and p and " " not in p for p in pair):
            raise CheckpointError(f"{source}: merge {m!r} cannot be written as 'left right' for llama.cpp")
        out.append(f"{pair[0]} {pair[1]}")
    return out


def gguf_vocab(tok: Tokenizer, n_vocab: int) -> GGUFVocab:
    """The GGUF vocabulary of `tok` for a model with `n_vocab` embedding rows."""
    src = tok.source
    tj = json.loads(tok.to_json())
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise CheckpointError(f"{src}: model type {model.get('type')!r}; GGUF export supports byte-level BPE only")
    if model.get("byte_fallback"):
        raise CheckpointError(f"{src}: byte_fallback BPE is sentencepiece-style; GGUF 'gpt2' vocab cannot hold it")
    if tj.get("normalizer") is not None:
        raise CheckpointError(f"{src}: has a normalizer, which llama.cpp's gpt2 vocab does not apply")
    if not _is_byte_level(tj.get("decoder")):
        raise CheckpointError(f"{src}: decoder is not ByteLevel; GGUF export supports byte-level BPE only")
    pre = pre_tokenizer_name(tj, src)
    n_tok = tok.vocab_size
    if n_tok > n_vocab:
        raise CheckpointError(f"{src}: tokenizer has {n_tok} ids but the model embeds only {n_vocab}")
    added = {a["id"]: a for a in tj.get("added_tokens") or []}
    tokens, types = [], []
    for i in range(n_tok):
        t = tok.id_to_token(i)
        if t is None:  # a hole in the id space: keep ids aligned with the embedding rows
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            tokens.append(t)
            types.append(NORMAL)
    for i in range(n_tok, n_vocab):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
    template = tok.chat_template
    if template is None:
        template = CHAT_TEMPLATE_BOS if tok.chat_add_bos else CHAT_TEMPLATE
    return GGUFVocab(pre=pre, tokens=tokens, token_types=types, merges=_merges(model, src),
                     bos_id=tok.eos_id, eos_id=tok.eos_id, pad_id=tok.pad_id, chat_template=template)


def add_vocab(writer, v: GGUFVocab) -> None:
    """Write `v` as `tokenizer.ggml.*` keys into a `gguf.GGUFWriter` (before its header is written)."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(v.pre)
    writer.add_token_list(v.tokens)
    writer.add_token_types(v.token_types)
    writer.add_token_merges(v.merges)
    writer.add_bos_token_id(v.bos_id)
    writer.add_eos_token_id(v.eos_id)
    writer.add_pad_token_id(v.pad_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(v.chat_template)
