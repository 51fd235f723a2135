"""Tiny OLMo 2 checkpoints for the GGUF tests (tests/test_gguf_*.py).

The weights are scaled up from the usual init (std 0.02) and the norm weights perturbed, so
logits are O(1–10): a 1e-3 logit tolerance then means something, and a swapped norm, a
permuted q/k row order or a wrong eps cannot pass as "close enough".
"""
from __future__ import annotations

from pathlib import Path

import torch

from olmo2.checkpoint import save_model
from olmo2.config import ModelConfig, pad_vocab
from olmo2.model import Olmo2
from olmo2.tokenizer import Tokenizer

DEMO_TEXTS = [
    "The king said to the queen: 'We'll ride at dawn.'\n\nShe didn't answer.",
    "In 1776, 13 colonies declared independence; 2024 is 248 years later.",
    "def f(x):\n    return x ** 2  # square\n",
    "Übermäßig große Straßen — naïve café, 東京 and 🙂 emoji.",
] * 20


def demo_tokenizer(tmp: Path, vocab_size: int = 400) -> Tokenizer:
    """A small demo BPE (olmo2/data/bpe.py: dolma2's pipeline) trained on a few lines."""
    from olmo2.data.bpe import train_bpe
    path = train_bpe(DEMO_TEXTS, vocab_size=vocab_size, out_path=tmp / "demo_tokenizer.json", min_frequency=1)
    return Tokenizer.from_file(path)


def make_checkpoint(out: Path, tok: Tokenizer, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                    n_kv_heads: int = 4, d_ff: int = 96, seed: int = 0, scale: float = 8.0,
                    dtype: torch.dtype | None = None) -> tuple[Path, Olmo2]:
    """Save a random OLMo 2 with `tok` to `out`; returns (dir, the fp32 model)."""
    cfg = ModelConfig(vocab_size=pad_vocab(tok.vocab_size), d_model=d_model, n_layers=n_layers,
                      n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=d_ff, max_seq_len=256,
                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    model = Olmo2(cfg)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(scale)
    save_model(model, out, tokenizer=tok, dtype=dtype)
    return out, model.eval()
