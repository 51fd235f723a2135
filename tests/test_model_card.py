"""Every verb that writes an HF model directory writes the model card with the risk notice.

README.md promises it; `soup` once copied weights and config but wrote no card, so the
final demo model had none. Each verb runs here through `olmo2.cli.main`, as a user runs it.
"""
from __future__ import annotations

from olmo2.card import RISK_NOTICE
from olmo2.cli import main
from olmo2.config import preset

SMALL = ["--set", "model.d_model=32", "--set", "model.n_layers=1", "--set", "model.n_kv_heads=2",
         "--set", "model.n_heads=2", "--set", "model.d_ff=64"]


def _card(d) -> str:
    text = (d / "README.md").read_text(encoding="utf-8")
    assert RISK_NOTICE in text, f"{d}/README.md lacks the risk notice"
    return text


def test_init_writes_card(tmp_path):
    assert main(["init", "--preset", "tiny", "--out", str(tmp_path / "m")]) == 0
    assert f"{preset('tiny').num_params():,} parameters" in _card(tmp_path / "m")


def test_soup_writes_its_own_card(tmp_path):
    for i in (1, 2):
        assert main(["init", "--preset", "tiny", "--out", str(tmp_path / f"m{i}"), "--seed", str(i)]) == 0
        (tmp_path / f"m{i}" / "README.md").unlink()  # the soup's card must not be a copy
    assert main(["soup", str(tmp_path / "m1"), str(tmp_path / "m2"), "--out", str(tmp_path / "s"),
                 "--weights", "3", "1"]) == 0
    card = _card(tmp_path / "s")
    assert "soup" in card and str(tmp_path / "m2") in card and "0.75" in card


def test_train_then_export_writes_card(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny_stage1", "--out", str(run), *SMALL,
                 "--set", "train.max_steps=1", "--set", "train.global_batch_size=2",
                 "--set", "train.micro_batch_size=2", "--set", "train.seq_len=16",
                 "--set", "train.progress=false", "--data", str(_token_dir(tmp_path))]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    _card(tmp_path / "hf")


def _token_dir(tmp_path):
    """A one-shard tokenized directory through the real tokenizer pipeline."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers
    words = "the a cat dog sat on mat ran far away".split()
    vocab = {w: i for i, w in enumerate(words + ["[UNK]", "<|endoftext|>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(tmp_path / "tok.json"))
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"text": " ".join(words[(i + j) % 10] for j in range(20))}) + "\n")
    out = tmp_path / "tokens"
    assert main(["data", "tokenize", str(tmp_path / "docs.jsonl"), "--tokenizer", str(tmp_path / "tok.json"),
                 "--out", str(out), "--quiet", "--workers", "1"]) == 0
    return out
