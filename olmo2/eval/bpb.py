"""Per-token log-probabilities, NLL and bits per byte of a text under a model.

Scoring convention (used by `olmo2 score`, the replication report and the eval tasks):
- The text is encoded without BOS and scored after a single `<|endoftext|>` context
  token, because in pretraining every document follows an EOS; so every token of the
  text, the first included, gets a log-prob.
- Texts longer than the context are scored with a sliding window: each window of
  `max_len` tokens re-reads the previous `max_len - stride` tokens as context and scores
  only the new ones, so no token is scored twice and most tokens see long context.
- Bits per byte = total NLL in nats / ln 2 / number of UTF-8 bytes of the text: unlike
  per-token loss it does not depend on the tokenizer, so models with different
  vocabularies (our demo tokenizer vs dolma2) compare fairly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Score:
    token_ids: list[int]
    logprobs: list[float]  # natural log, one per token of the text
    n_bytes: int

    @property
    def nll(self) -> float:
        return -sum(self.logprobs)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(self.n_bytes, 1)

    @property
    def mean_nll(self) -> float:
        return self.nll / max(len(self.logprobs), 1)


@torch.inference_mode()
def token_logprobs(model, ids: list[int], context_id: int, max_len: int | None = None,
                   stride: int | None = None) -> list[float]:
    """log p(ids[i] | context_id, ids[:i]) for every i, windowed to the model's context."""
    max_len = max_len or model.config.max_seq_len
    stride = stride or max(1, max_len // 2)
    seq = [context_id] + list(ids)
    out: list[float] = []
    scored = 1  # seq[0] is the context token and is never scored
    while scored < len(seq):
        end = min(len(seq), max_len if scored == 1 else scored + stride)
        begin = max(0, end - max_len)
        window = torch.tensor([seq[begin:end]], dtype=torch.long)
        logits = model(window)[0].float()
        logp = F.log_softmax(logits, dim=-1)
        # Token at absolute position p is predicted by logits at p-1 (window-relative).
        targets = torch.tensor(seq[scored:end])
        rows = torch.arange(scored - begin - 1, end - begin - 1)
        out.extend(logp[rows, targets].tolist())
        scored = end
    return out


def score_text(model, tokenizer, text: str, max_len: int | None = None) -> Score:
    ids = tokenizer.encode(text)
    lp = token_logprobs(model, ids, tokenizer.eos_id, max_len=max_len)
    return Score(ids, lp, len(text.encode("utf-8")))


def corpus_bits_per_byte(model, tokenizer, texts, max_len: int | None = None) -> float:
    """Bits per byte over many documents (NLL and bytes summed before dividing)."""
    nll, nbytes = 0.0, 0
    for t in texts:
        s = score_text(model, tokenizer, t, max_len=max_len)
        nll += s.nll
        nbytes += s.n_bytes
    return nll / math.log(2) / max(nbytes, 1)
