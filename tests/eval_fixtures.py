"""Tiny eval checkpoints made in the test: a byte-level BPE trained on a few sentences and a
random OLMo 2 with GQA, saved in HF format (so both olmo2 and transformers load it)."""
from __future__ import annotations

from pathlib import Path

import torch

TEXT = ("Question: There are 15 trees in the grove. How many trees? Answer: So the answer is 6.\n"
        "Q: What is human life expectancy in the United States?\nA: Human life expectancy is 78 years.\n"
        "The cat sat on the mat. 1,234 + 5 = 1,239. The answer is $18.\n") * 20


def make_checkpoint(out: Path, seed: int = 0, max_seq_len: int = 512, n_layers: int = 2) -> Path:
    """A tiny random olmo2 checkpoint with its own small byte-level tokenizer at `out`."""
    from olmo2.checkpoint import save_model
    from olmo2.config import ModelConfig
    from olmo2.data.bpe import special_token_ids, train_bpe
    from olmo2.model import Olmo2
    from olmo2.tokenizer import Tokenizer
    tok_path = train_bpe([TEXT], vocab_size=320, out_path=out.parent / f".tok-{out.name}.json")
    ids = special_token_ids(tok_path)
    cfg = ModelConfig(vocab_size=ids.vocab_size, d_model=64, n_layers=n_layers, n_heads=8, n_kv_heads=2,
                      d_ff=96, max_seq_len=max_seq_len, eos_token_id=ids.eos, pad_token_id=ids.pad)
    g = torch.Generator().manual_seed(seed)
    model = Olmo2(cfg)
    model.reset_parameters(generator=g)
    with torch.no_grad():  # perturb norms so a swapped norm cannot pass; larger std = peakier logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.mul_(5.0)
    save_model(model, out, tokenizer=Tokenizer.from_file(tok_path))
    return out
