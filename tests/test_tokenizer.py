"""The real dolma2 tokenizer: published test vectors, round trips, chat template vs transformers."""
import pytest

from olmo2.tokenizer import Tokenizer, render_chat

EDGE_CASES = [
    "", " ", "  leading and trailing  ", "tabs\tand\nnewlines\r\n\n\n", "naïve café — “quotes”",
    "emoji 👩‍👩‍👧‍👦 🇯🇵 🙂", "日本語のテキスト", "ελληνικά", "mixed 123456789 digits 3.14159",
    "<|endoftext|> in the middle", "\u200b zero width", "a" * 1000,
]


@pytest.fixture(scope="module")
def tok(dolma2_tokenizer_path):
    return Tokenizer.from_file(dolma2_tokenizer_path)


def test_published_vectors(tok):
    assert tok.encode("Hello world") == [9906, 1917]
    assert tok.encode("Language modeling is ") == [14126, 34579, 374, 220]
    assert tok.encode("<|endoftext|><|user|>\nHi\n<|assistant|>\n") == [
        100257, 27, 91, 882, 91, 397, 13347, 198, 27, 91, 78191, 91, 397]
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (100257, 100277, 100278)


def test_no_bos_by_default(tok):
    assert tok.encode("Hi")[0] != tok.eos_id
    assert tok.encode("Hi", add_bos=True)[0] == 100257


@pytest.mark.parametrize("text", EDGE_CASES)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_sha_is_stable(tok, dolma2_tokenizer_path):
    assert tok.sha256 == Tokenizer.from_file(dolma2_tokenizer_path).sha256


CONVS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
]


def test_template_string():
    s = render_chat(CONVS[1])
    assert s == ("<|system|>\nYou are terse.\n<|user|>\n2+2?\n<|assistant|>\n4<|endoftext|>\n"
                 "<|user|>\nAnd 3+3?\n<|assistant|>\n")
    assert render_chat(CONVS[2], add_generation_prompt=False) == "<|user|>\na\n<|assistant|>\nb<|endoftext|>"
    assert render_chat(CONVS[0], add_bos=True).startswith("<|endoftext|><|user|>\n")


@pytest.mark.hf
@pytest.mark.parametrize("add_bos", [False, True])
@pytest.mark.parametrize("conv", range(len(CONVS)))
@pytest.mark.parametrize("gen", [True, False])
def test_jinja_template_matches_transformers(tok, tmp_path, add_bos, conv, gen):
    transformers = pytest.importorskip("transformers")
    tok.chat_add_bos = add_bos
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    theirs = hf.apply_chat_template(CONVS[conv], tokenize=False, add_generation_prompt=gen)
    assert theirs == tok.apply_chat_template(CONVS[conv], add_generation_prompt=gen)
    assert hf("Hello world")["input_ids"] == [9906, 1917]  # no BOS from transformers either
    reloaded = Tokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_add_bos == add_bos


def test_bad_messages():
    from olmo2.errors import Olmo2Error
    with pytest.raises(Olmo2Error, match=r"messages\[0\].role"):
        render_chat([{"role": "robot", "content": "x"}])
    with pytest.raises(Olmo2Error, match=r"messages\[1\]"):
        render_chat([{"role": "user", "content": "x"}, {"content": "y"}])


def test_one_fingerprint_for_tokenizer_and_shards(tmp_path, dolma2_tokenizer_path):
    """`Tokenizer.sha256` is the file's sha256, the value token shards record, even for a
    tokenizer.json with CRLF line ends (a text-mode read once changed the hash)."""
    import json as _json

    from olmo2.data import tokenize as tk
    from olmo2.data.shards import check_tokenizer, sha256_file
    crlf = tmp_path / "tokenizer.json"
    text = _json.dumps(_json.loads(dolma2_tokenizer_path.read_text(encoding="utf-8")), indent=1)
    crlf.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    tok = Tokenizer.from_file(crlf)
    assert tok.sha256 == sha256_file(crlf) != sha256_file(dolma2_tokenizer_path)
    (tmp_path / "d.jsonl").write_text('{"text": "Hello world"}\n')
    meta = tk.tokenize([str(tmp_path / "d.jsonl")], str(crlf), str(tmp_path / "o"), workers=1, progress=False)
    assert meta["tokenizer"]["sha256"] == tok.sha256
    check_tokenizer(meta, crlf)
    tok.save(tmp_path)  # what save writes hashes to the same value
    assert sha256_file(tmp_path / "tokenizer.json") == tok.sha256


def test_one_tokenizer_loading_path():
    """Only olmo2/tokenizer.py loads a tokenizer.json (bpe.py builds and trains new ones)."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "olmo2"
    pattern = re.compile(r"from tokenizers import [^\n]*\bTokenizer\b|tokenizers\.Tokenizer\.from_")
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8"))
                 and p.relative_to(root).as_posix() not in ("tokenizer.py", "data/bpe.py")]
    assert not offenders, f"load tokenizers through olmo2.tokenizer.Tokenizer, not directly: {offenders}"
