"""Eval requests, the pair encoding both backends share, and the `hf` (transformers) backend.

    backend = load_backend("native", "runs/replicate-tiny/soup", batch_size=32)
    res = backend.loglikelihood([LoglikRequest("Q: 2+2?\\nA:", " 4"), ...])   # [LoglikResult]
    outs = backend.generate_until(["Question: ...\\nAnswer:"], stops=["\\n\\n"], max_new_tokens=512)

Both backends score exactly the same token sequences (`encode_pair`, the lm-eval/OLMES
rule): trailing whitespace of the context moves to the front of the continuation, the
pair is encoded as one string without special tokens, and the continuation ids are
`encode(context + continuation)[len(encode(context)):]`. The log-likelihood is the sum of
the continuation tokens' log-probs (natural log, fp32 log-softmax).

`native` (olmo2's own model, `olmo2/eval/native.py`) shares work: the few-shot prefix
common to a task's prompts is computed once, each context once after it, and all choices
of a context as one chunk on top of its cached keys/values.

`hf` (any transformers causal LM) is the plain reference method: one forward over
context + continuation per request, right-padded batches. It is how peers (Gemma, Llama,
Qwen) are run with the same prompts; tests check that both agree on olmo2 checkpoints.

Footguns: a context + continuation longer than the model's context raises (the task
layer drops whole leading shots first, as OLMES does); batch size changes padding and so
low-precision numerics, never results in fp32 beyond ~1e-6.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from olmo2.errors import GenerationError, Olmo2Error

BACKENDS = ("native", "hf", "vllm")
AUTO_TOKEN_BUDGET = 16384  # --batch-size auto: context+continuation tokens per scoring step
# Scoring keeps fp32 logits and their log-softmax for every token of a step: [tokens, vocab]
# twice. With dolma2's 100k vocabulary this, not the model, bounds a step (~2k tokens per GiB).
AUTO_LOGITS_BYTES = 2 << 30


@dataclass(frozen=True)
class LoglikRequest:
    """Score `continuation` after `context` (both plain text, no special tokens added)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class LoglikResult:
    """Summed natural-log probability of the continuation and whether greedy decoding gives it."""

    logprob: float
    is_greedy: bool
    n_tokens: int


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) by the lm-eval/OLMES rule (see module docstring)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    if not ctx:
        raise Olmo2Error("an eval context encodes to no tokens; OLMo 2 has no BOS to score after")
    cont = whole[len(ctx):]
    if not cont:
        raise Olmo2Error(f"continuation {continuation!r} encodes to no tokens after its context")
    return ctx, cont


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest stop string, as OLMES post-processes generations."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def weights_sha256(model_dir: str) -> str:
    """sha256 over the checkpoint's safetensors files (sorted by name); '' for hub ids."""
    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors")) if d.is_dir() else []
    if not files:
        return ""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def rows_per_step(batch_size: int | str, seq_len: int, vocab_size: int | None = None) -> int:
    """Rows per forward: the given batch size, or for 'auto' a token budget / sequence length
    (with `vocab_size`, also what keeps [tokens, vocab] fp32 logits ×2 within AUTO_LOGITS_BYTES)."""
    if batch_size == "auto":
        budget = AUTO_TOKEN_BUDGET
        if vocab_size:
            budget = min(budget, AUTO_LOGITS_BYTES // (8 * vocab_size))
        return max(1, budget // max(seq_len, 1))
    return int(batch_size)


class HFBackend:
    """Any transformers causal LM: one full forward per request (the reference method)."""

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int | str = 32, model_path: str = "", max_length: int | None = None):
        self.model, self.tok = model, tokenizer
        self.batch_size = batch_size
        self.model_path = model_path
        cfg_len = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(max_length or cfg_len)
        self.eos_id = tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def apply_chat_template(self, messages: list[dict]) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def loglikelihood(self, requests: Sequence[LoglikRequest], progress=None) -> list[LoglikResult]:
        import torch
        encoded = [encode_pair(self.encode, r.context, r.continuation) for r in requests]
        order = sorted(range(len(encoded)), key=lambda i: (-(len(encoded[i][0]) + len(encoded[i][1])), i))
        out: list[LoglikResult | None] = [None] * len(requests)
        dev = next(self.model.parameters()).device
        s = 0
        with torch.inference_mode():
            while s < len(order):
                seq0 = len(encoded[order[s]][0]) + len(encoded[order[s]][1])
                if seq0 > self.max_length:
                    raise GenerationError(f"eval request {order[s]}: {seq0} tokens exceed the model context "
                                          f"{self.max_length}; use fewer shots or a longer-context model")
                chunk = order[s:s + rows_per_step(self.batch_size, seq0, self.model.config.vocab_size)]
                s += len(chunk)
                seqs = [(encoded[i][0] + encoded[i][1])[:-1] for i in chunk]
                L = max(len(q) for q in seqs)
                ids = torch.zeros(len(chunk), L, dtype=torch.long, device=dev)
                att = torch.zeros(len(chunk), L, dtype=torch.long, device=dev)
                for r, q in enumerate(seqs):
                    ids[r, :len(q)] = torch.tensor(q)
                    att[r, :len(q)] = 1
                logits = self.model(input_ids=ids, attention_mask=att).logits
                for r, i in enumerate(chunk):
                    ctx, cont = encoded[i]
                    n = len(ctx) + len(cont) - 1
                    lp = torch.log_softmax(logits[r, n - len(cont):n].float(), -1)
                    tgt = torch.tensor(cont, device=dev)
                    out[i] = LoglikResult(float(lp.gather(-1, tgt[:, None]).sum()),
                                          bool((lp.argmax(-1) == tgt).all()), len(cont))
                if progress is not None:
                    progress.update(len(chunk))
        return out  # type: ignore[return-value]

    def generate_until(self, prompts: Sequence[str], stops: Sequence[str], max_new_tokens: int,
                       progress=None) -> list[str]:
        """Greedy, one prompt at a time (no padding to reason about), cut at the first stop."""
        import torch
        dev = next(self.model.parameters()).device
        outs = []
        with torch.inference_mode():
            for p in prompts:
                ids = torch.tensor([self.encode(p)], device=dev)
                n_new = min(max_new_tokens, self.max_length - ids.shape[1])
                if n_new < 1:
                    raise GenerationError(f"prompt of {ids.shape[1]} tokens leaves no room to generate in the "
                                          f"model context {self.max_length}")
                res = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                                          do_sample=False, stop_strings=list(stops) or None, tokenizer=self.tok,
                                          pad_token_id=self.tok.pad_token_id if self.tok.pad_token_id is not None
                                          else self.eos_id)
                gen = res[0, ids.shape[1]:].tolist()
                outs.append(cut_at_stops(self.tok.decode(gen, skip_special_tokens=True), stops))
                if progress is not None:
                    progress.update(1)
        return outs


def load_backend(kind: str, model_path: str, batch_size: int | str = 32, dtype: str = "float32",
                 quant: str = "none"):
    """A NativeBackend, HFBackend or VLLMBackend for `model_path` (a checkpoint dir or hub id)."""
    if kind == "native":
        from olmo2.checkpoint import load_model
        from olmo2.eval.native import NativeBackend
        from olmo2.tokenizer import Tokenizer
        model = load_model(model_path, dtype=dtype, quant=quant)
        tok = Tokenizer.from_pretrained(model_path)
        tok.check_fits(model.config.vocab_size, str(model_path))
        return NativeBackend(model.eval(), tok, batch_size, str(model_path))
    if kind == "hf":
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise Olmo2Error("--backend hf needs transformers: pip install transformers") from None
        try:
            tok = AutoTokenizer.from_pretrained(model_path)
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        except OSError as e:
            raise Olmo2Error(f"--model {model_path}: transformers cannot load it ({str(e).splitlines()[0][:120]})") from None
        return HFBackend(model, tok, batch_size, str(model_path))
    if kind == "vllm":  # GPUs; thin and not testable here (olmo2/eval/vllm_backend.py)
        from olmo2.eval.vllm_backend import VLLMBackend
        return VLLMBackend.load(model_path, dtype)
    raise Olmo2Error(f"--backend {kind!r}: unknown; choose one of {', '.join(BACKENDS)}")
