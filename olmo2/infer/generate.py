"""Autoregressive generation with a preallocated KV cache: batch ids, or streamed text.

    ids = generate(model, prompt_ids, max_new_tokens=64, temperature=0)        # greedy
    ids = generate(model, [[1, 2, 3], [4, 5]], 32, temperature=0.8, top_p=0.95, seed=0)
    for piece in stream_generate(model, tok, tok.encode("Hi"), 64, stop_strings=["\\n\\n"]):
        print(piece, end="", flush=True)

How a call runs: validate → `Decoder.start` (chunked prefill; only the lm_head row of the
last position runs) → `Decoder.step` per new token, a fixed-shape one-token forward against
a preallocated cache (olmo2/infer/decoder.py; `compile=True` runs it through
`torch.compile`). The output tensor is allocated once at `[B, prompt + max_new_tokens]`;
nothing grows, and the prompt is never re-run, so a step costs the weights once plus
attention over the cache.

Return value matches `transformers.generate`: prompt included; a row that produced an
EOS/stop id keeps it and is filled with `pad_token_id` afterwards; generation ends when
every row is finished (the result is then shorter than prompt + max_new_tokens).

Batches of different prompt lengths are left-padded (pass a list of id lists, or ids plus
an `attention_mask` of 0 = pad). Pads get position 0 and are masked out as keys; a pad
query may attend to itself only, which keeps its (unused) activations finite — an all
-masked SDPA row would produce NaN that then poisons real rows through V.

Host syncs: the per-step `unfinished.any()` check reads one bool back (for batch 1 on CPU
this is free; it is the only sync besides `multinomial`/stop-string decoding). Stop
strings need the tokenizer and decode incrementally per row.

`decode_one` is the plain prefix-cache step (the model against a `KVCache` whose length
is a host int); tests use it as the reference for the cached decode.
"""
from __future__ import annotations

import operator
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from olmo2.errors import GenerationError
from olmo2.infer.decoder import Decoder
from olmo2.infer.kvcache import KVCache
from olmo2.infer.sampling import SamplingParams, mark_seen, sample_next
from olmo2.infer.stream import IncrementalDecoder, StopStringHolder


def decode_one(model, token: torch.Tensor, cache: KVCache, positions: torch.Tensor | None = None,
               attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One decode step: token [B] (+ positions [B], mask [B,1,1,S]) → next logits [B, V]."""
    pos = None if positions is None else positions[:, None]
    return model(token[:, None], positions=pos, cache=cache, attn_mask=attn_mask)[:, -1]


# ---- argument handling ---------------------------------------------------------------
def _as_id_list(x, name: str) -> list[int]:
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.is_complex() or x.dtype == torch.bool:
            raise GenerationError(f"{name} must hold integer token ids (got a {x.dtype} tensor)")
        x = x.reshape(-1).tolist()
    if not hasattr(x, "__iter__"):
        x = [x]
    items = list(x)
    if len(items) == 1 and isinstance(items[0], (list, tuple)):
        items = list(items[0])  # one prompt given as a batch of one
    out = []
    for i in items:
        # int() would silently truncate 3.7 to 3; operator.index takes only true integers
        # (Python and numpy ints) and refuses floats.
        try:
            if isinstance(i, bool):
                raise TypeError
            out.append(operator.index(i))
        except TypeError:
            raise GenerationError(f"{name} must be integer token ids (got {i!r})") from None
    return out


def prepare_prompts(input_ids, attention_mask=None, pad_token_id: int = 0,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt(s) → (ids [B, T] long, left-padding mask [B, T] bool or None when unpadded)."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dtype.is_floating_point or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise GenerationError(f"input_ids must hold integer token ids (got a {input_ids.dtype} tensor)")
        ids = input_ids.to(device=device, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise GenerationError(f"input_ids must be [batch, tokens] (got shape {tuple(input_ids.shape)})")
        mask = None
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask, device=device).to(torch.bool)
            if mask.dim() == 1:
                mask = mask[None]
            if mask.shape != ids.shape:
                raise GenerationError(f"attention_mask shape {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
    else:
        rows = list(input_ids)
        if rows and not isinstance(rows[0], (list, tuple, torch.Tensor)):
            rows = [rows]  # a single flat prompt
        rows = [_as_id_list(r, "input_ids") for r in rows]
        if not rows:
            raise GenerationError("input_ids is empty; give at least one prompt")
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), T), dtype=torch.bool, device=device)
        for i, r in enumerate(rows):
            if r:
                ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, T - len(r):] = True
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise GenerationError("prompt is empty; OLMo 2 has no BOS token, give at least one prompt token")
    if mask is not None:
        if not bool(mask[:, -1].all()) or bool((mask[:, 1:].int() < mask[:, :-1].int()).any()):
            raise GenerationError("attention_mask must be left-padded (zeros before the prompt, ones to the end of every row)")
        if bool(mask.all()):
            mask = None  # nothing padded: take the plain causal path
    return ids, mask


def check_vocab(model, ids: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Raise GenerationError if a (non-pad) prompt id is outside the model's vocabulary."""
    real = ids if mask is None else ids[mask]
    if real.numel():
        lo, hi = (int(v) for v in torch.aminmax(real))
        V = model.config.vocab_size
        if lo < 0 or hi >= V:
            raise GenerationError(f"prompt token id {lo if lo < 0 else hi} is outside the model's vocabulary "
                                  f"[0, {V}); use the tokenizer the model was trained with")


def check_lengths(model, prompt_len: int, max_new_tokens: int) -> None:
    """Raise GenerationError unless 1 <= max_new_tokens and prompt + new fits the context."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be an integer >= 1 (got {max_new_tokens!r})")
    ctx = model.config.max_seq_len
    if prompt_len + max_new_tokens > ctx:
        extra = "" if prompt_len >= ctx else f" (+{max_new_tokens} new tokens = {prompt_len + max_new_tokens})"
        raise GenerationError(f"prompt is {prompt_len} tokens{extra}, model context is {ctx}; "
                              "shorten the prompt or lower --max-new-tokens")


def _make_generator(seed, generator, device) -> torch.Generator | None:
    if generator is not None:
        return generator
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise GenerationError(f"seed must be an integer in [0, 2**64) (got {seed!r})")
    return torch.Generator(device=device).manual_seed(seed)


# ---- the token loop ----------------------------------------------------------------
@torch.inference_mode()
def iter_tokens(model, ids: torch.Tensor, max_new_tokens: int, params: SamplingParams,
                mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                compile: bool = False, decoder: Decoder | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token ids [B] for up to max_new_tokens steps (no stop logic here).

    Inputs are already validated (`prepare_prompts`, `check_lengths`, `params.validated()`).
    The caller may stop iterating at any point; no forward runs after the last yield.
    Pass a `decoder` kept across calls (a chat) to reuse its cached prefix.
    """
    # The decorator form re-enters inference mode around each resume, so the mode never
    # leaks into the caller between yields (a `with` block here would).
    B, T = ids.shape
    if decoder is None:
        decoder = Decoder(model, B, T + max_new_tokens, compile=compile)
    seen = None
    if params.repetition_penalty not in (None, 1, 1.0):
        seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=ids.device)
        mark_seen(seen, ids, mask)
    logits = decoder.start(ids, mask, max_new_tokens)
    for i in range(max_new_tokens):
        tok = sample_next(logits, params, seen, generator)
        yield tok
        if i == max_new_tokens - 1:
            break
        if seen is not None:
            mark_seen(seen, tok)
        logits = decoder.step(tok)


# ---- public entry points -----------------------------------------------------------
def _stop_ids(model, eos_token_id, stop_token_ids) -> list[int]:
    eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
    return sorted(set(_as_id_list(eos, "eos_token_id") + _as_id_list(stop_token_ids, "stop_token_ids")))


def _check_stop_strings(stop_strings, tokenizer) -> list[str]:
    if stop_strings is None:
        return []
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    stops = list(stop_strings)
    if any(not isinstance(s, str) or not s for s in stops):
        raise GenerationError(f"stop_strings must be non-empty strings (got {stops!r})")
    if stops and tokenizer is None:
        raise GenerationError("stop_strings need a tokenizer: pass tokenizer=... to generate()")
    return stops


@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int = 32, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
             generator: torch.Generator | None = None, eos_token_id: int | Sequence[int] | None = None,
             stop_token_ids: Sequence[int] | None = None, stop_strings: Sequence[str] | None = None,
             tokenizer=None, attention_mask=None, pad_token_id: int | None = None,
             compile: bool = False) -> torch.Tensor:
    """Token ids [B, prompt+new] as transformers returns them (EOS kept, then pad_token_id).

    `eos_token_id=None` uses the model config's EOS; pass `[]` to never stop on a token.
    Stop strings are not emitted: the tokens overlapping the earliest stop string are
    replaced by `pad_token_id` (use `stream_generate` for exact text cut-off).
    """
    device = model.lm_head.weight.device
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id
        if pad_token_id is None:
            pad_token_id = model.config.eos_token_id if model.config.eos_token_id is not None else 0
    ids, mask = prepare_prompts(input_ids, attention_mask, pad_token_id, device)
    B, T = ids.shape
    check_lengths(model, T, max_new_tokens)
    check_vocab(model, ids, mask)
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty).validated()
    stops = _check_stop_strings(stop_strings, tokenizer)
    stop_ids = torch.tensor(_stop_ids(model, eos_token_id, stop_token_ids), dtype=torch.long, device=device)
    gen = _make_generator(seed, generator, device)

    out = torch.full((B, T + max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    out[:, :T] = ids
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    keep = [max_new_tokens] * B  # per row: generated tokens to keep (stop strings trim)
    holders = [(IncrementalDecoder(tokenizer), StopStringHolder(stops)) for _ in range(B)] if stops else None
    n = 0
    for step, tok in enumerate(iter_tokens(model, ids, max_new_tokens, params, mask, gen, compile)):
        tok = torch.where(unfinished, tok, torch.full_like(tok, pad_token_id))
        out[:, T + step] = tok
        n = step + 1
        if stop_ids.numel():
            unfinished &= ~torch.isin(tok, stop_ids)
        if holders is not None:
            for b in range(B):
                if not unfinished[b]:
                    continue
                dec, holder = holders[b]
                if holder.push(dec.push(int(tok[b])))[1]:
                    unfinished[b] = False
                    keep[b] = _tokens_before_stop(tokenizer, out[b, T:T + n].tolist(), stops)
                    out[b, T + keep[b]:] = pad_token_id
        if not bool(unfinished.any()):  # the one per-step host sync
            break
    return out[:, :T + max(min(k, n) for k in keep)]


def _tokens_before_stop(tokenizer, gen: list[int], stops: list[str]) -> int:
    """How many leading tokens of `gen` decode to text that touches no stop string."""
    text = tokenizer.decode(gen, skip_special_tokens=True)
    cut = min(i for i in (text.find(s) for s in stops) if i >= 0)
    for j in range(len(gen), -1, -1):
        if len(tokenizer.decode(gen[:j], skip_special_tokens=True).rstrip("\ufffd")) <= cut:
            return j
    return 0


@dataclass
class GenerationStats:
    """Filled in by stream_generate: token counts and wall times (seconds)."""

    prompt_tokens: int = 0
    reused_tokens: int = 0   # prompt tokens whose K/V came from the decoder's cache (a chat)
    new_tokens: int = 0
    prefill_s: float = 0.0   # start → first token sampled (time to first token)
    decode_s: float = 0.0    # first token → last token
    stop_reason: str = ""    # "eos", "stop_string" or "length"

    @property
    def decode_tok_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0


def stream_generate(model, tokenizer, prompt_ids, max_new_tokens: int = 128, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
                    seed: int | None = None, generator: torch.Generator | None = None,
                    eos_token_id: int | Sequence[int] | None = None, stop_token_ids: Sequence[int] | None = None,
                    stop_strings: Sequence[str] | None = None, stats: GenerationStats | None = None,
                    compile: bool = False, decoder: Decoder | None = None) -> Iterator[str]:
    """Yield printable text pieces of one prompt's continuation; stop ids/strings not emitted.

    Validation runs here, before the first `next()`; pass `stats` for counts and timings,
    and a `decoder` kept across calls to reuse the cached prefix (a chat's earlier turns).
    """
    device = model.lm_head.weight.device
    ids, _ = prepare_prompts(_as_id_list(prompt_ids, "prompt_ids"), None, 0, device)
    T = ids.shape[1]
    check_lengths(model, T, max_new_tokens)
    check_vocab(model, ids)
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty).validated()
    stops = _check_stop_strings(stop_strings, tokenizer)
    stop_ids = set(_stop_ids(model, eos_token_id, stop_token_ids))
    gen = _make_generator(seed, generator, device)
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens, stats.stop_reason = T, "length"
    return _stream(model, tokenizer, ids, max_new_tokens, params, stops, stop_ids, gen, stats, compile, decoder)


def _stream(model, tokenizer, ids, max_new_tokens, params, stops, stop_ids, gen, stats, compile,
            decoder) -> Iterator[str]:
    dec, holder = IncrementalDecoder(tokenizer), StopStringHolder(stops)
    t0 = time.perf_counter()
    t_first = None
    for tok in iter_tokens(model, ids, max_new_tokens, params, None, gen, compile, decoder):
        t = int(tok[0])  # host sync: needed to detokenize anyway
        now = time.perf_counter()
        if t_first is None:
            t_first = now
            stats.prefill_s = now - t0
            stats.reused_tokens = decoder.reused if decoder is not None else 0
        stats.new_tokens += 1
        stats.decode_s = now - t_first
        if t in stop_ids:
            stats.stop_reason = "eos"
            break
        text, hit = holder.push(dec.push(t))
        if text:
            yield text
        if hit:
            stats.stop_reason = "stop_string"
            return
    text, hit = holder.push(dec.flush())
    text += "" if hit else holder.flush()
    if hit:
        stats.stop_reason = "stop_string"
    if text:
        yield text
