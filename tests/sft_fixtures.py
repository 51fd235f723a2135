"""A tiny base checkpoint with its own small dolma2-style BPE, and chat JSONL, for SFT/LoRA tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT = ("The cat sat on the mat. What is two plus three? Two plus three is five. Hello there, how are you? "
        "I am fine, thank you. The answer is 42. Please add the numbers and explain the steps. ") * 20


def tiny_base(out: Path, seed: int = 0, max_seq_len: int = 128) -> Path:
    """A random OLMo 2 (d 32, 2 layers, GQA) saved as an HF dir with a 300-id BPE tokenizer."""
    from olmo2.checkpoint import save_model
    from olmo2.config import ModelConfig
    from olmo2.data.bpe import special_token_ids, train_bpe
    from olmo2.model import Olmo2
    from olmo2.tokenizer import Tokenizer
    tok_path = train_bpe([TEXT], vocab_size=300, out_path=out.parent / f".tok-{out.name}.json")
    ids = special_token_ids(tok_path)
    cfg = ModelConfig(vocab_size=ids.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                      max_seq_len=max_seq_len, eos_token_id=ids.eos, pad_token_id=ids.pad)
    model = Olmo2(cfg)
    model.reset_parameters(generator=torch.Generator().manual_seed(seed))
    save_model(model, out, tokenizer=Tokenizer.from_file(tok_path))
    return out


def chats(n: int = 24, seed: int = 0) -> list[dict]:
    """Short single- and two-turn conversations with a learnable pattern (answer = sum)."""
    import random
    r = random.Random(seed)
    out = []
    for i in range(n):
        a, b = r.randint(1, 9), r.randint(1, 9)
        msgs = [{"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": f"The answer is {a + b}."}]
        if i % 3 == 0:
            msgs = [{"role": "system", "content": "Please add the numbers."}] + msgs + [
                {"role": "user", "content": "Thank you."}, {"role": "assistant", "content": "I am fine."}]
        out.append({"id": f"ex{i}", "messages": msgs})
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
