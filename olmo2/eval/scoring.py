"""Log-likelihood and greedy-generation backends for `olmo2 eval`: `native` and `hf`.

    backend = load_backend("native", "runs/replicate-tiny/soup", batch_size=32)
    res = backend.loglikelihood([LoglikRequest("Q: 2+2?\\nA:", " 4"), ...])   # [LoglikResult]
    outs = backend.generate_until(["Question: ...\\nAnswer:"], stops=["\\n\\n"], max_new_tokens=512)

Both backends score exactly the same token sequences (`encode_pair`, the lm-eval/OLMES
rule): trailing whitespace of the context moves to the front of the continuation, the
pair is encoded as one string without special tokens, and the continuation ids are
`encode(context + continuation)[len(encode(context)):]`. The log-likelihood is the sum of
the continuation tokens' log-probs (natural log, fp32 log-softmax).

`native` (olmo2's own model) is built for multiple choice, where many continuations share
one context: requests are grouped by context, groups sorted longest first (so a too-big
batch fails at once, and padding is small), up to `batch_size` continuations are scored
per step, and each context is prefilled ONCE into the KV cache; its cached keys/values are
then gathered per continuation row and all continuations run as one chunk on top. A
lettered (MC-format) task whose continuations are one token costs a single prefill.

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

BACKENDS = ("native", "hf")
AUTO_TOKEN_BUDGET = 16384  # --batch-size auto: context+continuation tokens per scoring step


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


def _rows_per_step(batch_size: int | str, seq_len: int) -> int:
    if batch_size == "auto":
        return max(1, AUTO_TOKEN_BUDGET // max(seq_len, 1))
    return int(batch_size)


class NativeBackend:
    """olmo2's model: grouped contexts, one prefill per context, KV cache reuse."""

    name = "native"

    def __init__(self, model, tokenizer, batch_size: int | str = 32, model_path: str = ""):
        self.model, self.tok = model, tokenizer
        self.batch_size = batch_size
        self.model_path = model_path
        self.max_length = model.config.max_seq_len
        self.eos_id = tokenizer.eos_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def apply_chat_template(self, messages: list[dict]) -> str:
        return self.tok.apply_chat_template(messages, add_generation_prompt=True)

    def loglikelihood(self, requests: Sequence[LoglikRequest], progress=None) -> list[LoglikResult]:
        """One LoglikResult per request, in request order."""
        import torch
        encoded = [encode_pair(self.encode, r.context, r.continuation) for r in requests]
        for i, (c, x) in enumerate(encoded):
            if len(c) + len(x) > self.max_length:
                raise GenerationError(f"eval request {i}: {len(c) + len(x)} tokens exceed the model context "
                                      f"{self.max_length}; use fewer shots or a longer-context model")
        groups: dict[tuple, list[int]] = {}
        for i, (c, _) in enumerate(encoded):
            groups.setdefault(tuple(c), []).append(i)
        order = sorted(groups.items(), key=lambda kv: (-(len(kv[0]) + max(len(encoded[i][1]) for i in kv[1])), kv[1][0]))
        out: list[LoglikResult | None] = [None] * len(requests)
        batch: list[tuple[tuple, list[int]]] = []
        rows = 0
        with torch.inference_mode():
            for ctx, idx in order:
                limit = _rows_per_step(self.batch_size, len(ctx) + max(len(encoded[i][1]) for i in idx))
                if batch and rows + len(idx) > limit:
                    self._score_groups(batch, encoded, out, progress)
                    batch, rows = [], 0
                batch.append((ctx, idx))
                rows += len(idx)
            if batch:
                self._score_groups(batch, encoded, out, progress)
        return out  # type: ignore[return-value]

    def _score_groups(self, batch, encoded, out, progress) -> None:
        import torch
        from olmo2.infer.kvcache import KVCache
        model = self.model
        dev = model.lm_head.weight.device
        G = len(batch)
        T = max(len(c) for c, _ in batch)
        row_group = [g for g, (_, idx) in enumerate(batch) for _ in idx]
        row_req = [i for _, idx in batch for i in idx]
        conts = [encoded[i][1] for i in row_req]
        B, C = len(row_req), max(len(x) for x in conts)
        # 1) Prefill each distinct context once (left-padded to T; pads masked out as keys).
        ids = torch.zeros(G, T, dtype=torch.long, device=dev)
        cmask = torch.zeros(G, T, dtype=torch.bool, device=dev)
        for g, (c, _) in enumerate(batch):
            ids[g, T - len(c):] = torch.tensor(c, dtype=torch.long)
            cmask[g, T - len(c):] = True
        cache_g = KVCache.for_model(model, G, T)
        if bool(cmask.all()):
            last = model(ids, cache=cache_g, last_only=True)[:, -1]
        else:
            pos = (cmask.long().cumsum(-1) - 1).clamp(min=0)
            causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
            eye = torch.eye(T, dtype=torch.bool, device=dev)  # pad queries see themselves: no NaN rows
            m = (causal[None] & cmask[:, None, :]) | eye[None]
            last = model(ids, positions=pos, cache=cache_g, attn_mask=m[:, None], last_only=True)[:, -1]
        first_lp = torch.log_softmax(last.float(), -1)  # [G, V]: predicts each continuation's 1st token
        # 2) All continuations (minus their last token) as one right-padded chunk on top of
        #    the gathered context cache; pads sit after real tokens, so causality hides them.
        chunk_lp = None
        if C > 1:
            gi = torch.tensor(row_group, device=dev)
            cache = KVCache.for_model(model, B, T + C - 1)
            for layer in range(len(cache.k)):
                cache.k[layer][:, :, :T] = cache_g.k[layer][gi]
                cache.v[layer][:, :, :T] = cache_g.v[layer][gi]
            cache.length = T
            x = torch.zeros(B, C - 1, dtype=torch.long, device=dev)
            for b, cont in enumerate(conts):
                if len(cont) > 1:
                    x[b, :len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
            ctx_len = cmask.sum(-1)[gi]  # real context length per row
            # Pad slots of short continuations may run past the model's last position;
            # their outputs are never read, so any valid position will do.
            positions = (ctx_len[:, None] + torch.arange(C - 1, device=dev)[None]).clamp(max=self.max_length - 1)
            key_ok = torch.ones(B, C - 1, T + C - 1, dtype=torch.bool, device=dev)
            key_ok[:, :, :T] = cmask[gi][:, None, :]
            key_ok[:, :, T:] = torch.ones(C - 1, C - 1, dtype=torch.bool, device=dev).tril()[None]
            logits = model(x, positions=positions, cache=cache, attn_mask=key_ok[:, None])
            chunk_lp = torch.log_softmax(logits.float(), -1)  # [B, C-1, V]
        for b, cont in enumerate(conts):
            g = row_group[b]
            tgt = torch.tensor(cont, dtype=torch.long, device=dev)
            lp = first_lp[g][None]
            if len(cont) > 1:
                lp = torch.cat([lp, chunk_lp[b, :len(cont) - 1]], 0)  # [n, V]
            tok_lp = lp.gather(-1, tgt[:, None])[:, 0]
            greedy = bool((lp.argmax(-1) == tgt).all())
            out[row_req[b]] = LoglikResult(float(tok_lp.sum()), greedy, len(cont))
        if progress is not None:
            progress.update(B)

    def generate_until(self, prompts: Sequence[str], stops: Sequence[str], max_new_tokens: int,
                       progress=None) -> list[str]:
        """Greedy continuations of each prompt, cut at the earliest stop string."""
        from olmo2.infer.generate import generate
        enc = [self.encode(p) for p in prompts]
        order = sorted(range(len(enc)), key=lambda i: (-len(enc[i]), i))
        outs: list[str] = [""] * len(enc)
        bs = _rows_per_step(self.batch_size, max(len(e) for e in enc) + max_new_tokens) if enc else 1
        for s in range(0, len(order), bs):
            chunk = order[s:s + bs]
            longest = max(len(enc[i]) for i in chunk)
            n_new = min(max_new_tokens, self.max_length - longest)
            if n_new < 1:
                raise GenerationError(f"prompt of {longest} tokens leaves no room to generate in the model "
                                      f"context {self.max_length}")
            res = generate(self.model, [enc[i] for i in chunk], max_new_tokens=n_new, temperature=0,
                           stop_strings=list(stops), tokenizer=self.tok, pad_token_id=self.tok.pad_id)
            for row, i in enumerate(chunk):
                gen = [t for t in res[row, longest:].tolist()]
                # Trailing pads (after EOS / stop) are not part of the text.
                while gen and gen[-1] == self.tok.pad_id:
                    gen.pop()
                if gen and gen[-1] == self.eos_id:
                    gen.pop()
                outs[i] = cut_at_stops(self.tok.decode(gen, skip_special_tokens=True), stops)
            if progress is not None:
                progress.update(len(chunk))
        return outs


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
                chunk = order[s:s + _rows_per_step(self.batch_size, seq0)]
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


def load_backend(kind: str, model_path: str, batch_size: int | str = 32, dtype: str = "float32"):
    """A NativeBackend or HFBackend for `model_path` (a checkpoint dir or hub id)."""
    if kind == "native":
        from olmo2.checkpoint import load_model
        from olmo2.tokenizer import Tokenizer
        model = load_model(model_path, dtype=dtype)
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
    raise Olmo2Error(f"--backend {kind!r}: unknown; choose one of {', '.join(BACKENDS)}")
