"""Continuous batching: one worker thread runs every request's decode steps together.

    engine = Engine(model, tok, EngineConfig(max_batch=16))
    engine.start()
    handle = engine.submit(GenRequest(prompt_ids=ids, max_tokens=64, params=SamplingParams(0)))
    for ev in handle.events():                    # blocking iterator (tests, scripts)
        print(ev.text, end="")
    # from asyncio: `handle = engine.submit(req, loop)` then `await handle.queue.get()`

The loop (`_run`, in its own thread so model compute never blocks the event loop):
admit waiting requests while the batch has room and the block pool can hold each new
request's worst case (prompt + max_tokens) — all admitted prompts are prefilled in ONE
right-padded forward into fresh KV blocks (the lm_head runs only on each prompt's last
token), and each samples its first token; then ONE decode forward for every running
request, each at its own position (`kvblocks.BlockPool.bind`), then per-row sampling,
detokenization and stop checks. A request that finishes or is cancelled leaves the batch
before the next step and its blocks go back to the pool, so a new request joins at the
very next step — no request waits for the batch it would have joined to drain.

Why reserve the worst case at admission instead of preempting: a request that has started
always finishes without recomputation or swapping, and the scheduler stays ~50 lines;
blocks are still taken one at a time as tokens arrive (a short answer never touches its
reservation's tail), and the pool is a budget shared by every request, not a
`max_batch × context` slab.

Exactness: every row's attention sees exactly its own keys (the mask), and sampling is
per row with the request's own `torch.Generator`, so a request's tokens do not depend on
its batch-mates — a test checks greedy batched output equals each request decoded alone
and equals `olmo2.infer.generate`.

Events are delivered to an asyncio queue with `loop.call_soon_threadsafe` (or a plain
queue for synchronous callers). `Handle.cancel()` (a client disconnected) is honoured at
the next step: the row leaves and its blocks are freed.
"""
from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from olmo2.infer.sampling import SamplingParams, process_logits
from olmo2.infer.stream import IncrementalDecoder, StopStringHolder
from olmo2.serve.kvblocks import BlockPool


PREFILL_TOKENS = 8192
"""Most (padded) prompt tokens prefilled in one forward; more requests wait a step."""


class QueueFull(Exception):
    """The waiting queue is at its bound; the server answers 429."""


@dataclass
class EngineConfig:
    """Scheduler limits; `olmo2 serve` flags map onto these."""

    max_batch: int = 16
    """Requests decoded together in one forward."""
    max_queue: int = 64
    """Requests allowed to wait for a batch slot; more are refused (HTTP 429)."""
    block_size: int = 16
    """KV positions per block."""
    kv_tokens: int = 0
    """KV positions in the block pool (0 = max_batch × context, capped by kv_mb)."""
    kv_mb: int = 1024
    """Upper bound on the pool's memory in MiB when kv_tokens is 0."""
    kv_int8: bool = False
    """Store K/V as int8 with per-vector scales (4× smaller than fp32)."""


@dataclass
class GenRequest:
    """One sequence to generate (an `n > 1` API request is n of these)."""

    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0))
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_ids: frozenset[int] = frozenset()
    logprobs: int | None = None
    """None = off; k >= 0: the sampled token's log-prob plus the k most likely."""
    prompt_logprobs: bool = False
    """Also return each prompt token's log-prob (completions `echo` + `logprobs`)."""
    constraint: object | None = None
    """Token-mask constraint (`olmo2.serve.jsonmode`): apply(scores), advance(id), done()."""


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Event:
    """What one step produced for one request; the last event has finish_reason set."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None      # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_logprobs: list[float | None] | None = None   # first event only
    error: str | None = None


class Handle:
    """The caller's side of a submitted request: an event queue and cancel()."""

    def __init__(self, req: GenRequest, loop=None):
        self.req = req
        self.loop = loop
        self.queue = asyncio.Queue() if loop is not None else queue.Queue()
        self.cancelled = threading.Event()
        self.submitted = time.monotonic()

    def _put(self, ev: Event) -> None:
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)
            except RuntimeError:  # the event loop has closed (server shutting down)
                self.cancelled.set()
        else:
            self.queue.put(ev)

    def cancel(self) -> None:
        """Stop generating; the slot and blocks are freed before the next step."""
        self.cancelled.set()

    def events(self) -> Iterator[Event]:
        """Blocking iterator over events (synchronous callers only)."""
        while True:
            ev = self.queue.get()
            yield ev
            if ev.finish_reason is not None:
                return


@dataclass
class _Row:
    """A running request: its blocks, length, sampler state and detokenizer."""

    handle: Handle
    blocks: list[int]
    reserved: int
    length: int                    # tokens in the KV cache
    last: int                      # last sampled token (fed at the next step)
    generator: torch.Generator
    dec: IncrementalDecoder
    holder: StopStringHolder
    generated: int = 0
    tokens: list[int] = field(default_factory=list)   # ids whose K/V are in `blocks`, in order


class Engine:
    """The batching scheduler and its worker thread (see the module docstring)."""

    def __init__(self, model, tokenizer, cfg: EngineConfig | None = None):
        self.model, self.tok = model, tokenizer
        self.cfg = cfg = cfg or EngineConfig()
        self.ctx = model.config.max_seq_len
        pool_probe = BlockPool.for_model(model, 1, cfg.block_size, cfg.kv_int8)
        per_token = pool_probe.bytes_per_token()
        tokens = cfg.kv_tokens or min(cfg.max_batch * self.ctx, max(self.ctx, cfg.kv_mb * 2**20 // per_token))
        self.pool = BlockPool.for_model(model, max(1, -(-tokens // cfg.block_size)), cfg.block_size, cfg.kv_int8)
        self.capacity_tokens = self.pool.n_blocks * cfg.block_size
        self._waiting: collections.deque[Handle] = collections.deque()
        self._rows: list[_Row] = []
        self._reserved = 0
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.device = model.lm_head.weight.device
        # Metrics (read by /metrics; ints and floats written by this thread only).
        self.stats = collections.Counter()
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=256)

    # ---- caller side ----------------------------------------------------------------
    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name="olmo2-engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def max_request_tokens(self) -> int:
        """The most prompt + max_tokens positions one request may reserve."""
        return min(self.ctx, self.capacity_tokens)

    def submit(self, req: GenRequest, loop=None) -> Handle:
        """Queue a request; raises QueueFull when the waiting queue is at its bound."""
        if len(req.prompt_ids) + req.max_tokens > self.max_request_tokens():
            raise ValueError("prompt + max_tokens exceeds the server's per-request limit")
        h = Handle(req, loop)
        with self._cv:
            if len(self._waiting) >= self.cfg.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(h)
            self.stats["submitted"] += 1
            self._cv.notify()
        return h

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def batch_size(self) -> int:
        return len(self._rows)

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Generated tokens per second over the last `window` seconds."""
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= window]
        return sum(n for _, n in recent) / window if recent else 0.0

    # ---- worker thread ----------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._rows:
                    self._cv.wait()
                if self._stop:
                    return
            try:
                self._drop_cancelled()
                self._admit()
                if self._rows:
                    self._step()
            except Exception as e:  # a bug must not hang every client: fail them all, keep serving
                for row in list(self._rows):
                    self._finish(row, "error", error=f"internal error during generation ({type(e).__name__})")
                import traceback
                traceback.print_exc()

    def _drop_cancelled(self) -> None:
        with self._cv:
            for h in [h for h in self._waiting if h.cancelled.is_set()]:
                self._waiting.remove(h)
                h._put(Event(finish_reason="cancelled"))
        for row in [r for r in self._rows if r.handle.cancelled.is_set()]:
            self._finish(row, "cancelled")

    def _admit(self) -> None:
        """Move waiting requests into the batch, prefilling them together (one forward)."""
        group: list[tuple[Handle, int]] = []
        with self._cv:
            while self._waiting and len(self._rows) + len(group) < self.cfg.max_batch:
                h = self._waiting[0]
                T = len(h.req.prompt_ids)
                need = self.pool.blocks_for(T + h.req.max_tokens)
                if self._reserved + need > self.pool.n_blocks:
                    break  # wait for a running request to give its blocks back
                longest = max([T] + [len(g.req.prompt_ids) for g, _ in group])
                if group and (len(group) + 1) * longest > PREFILL_TOKENS:
                    break  # the rest joins at the next step
                self._waiting.popleft()
                self._reserved += need
                group.append((h, need))
        # Prompt log-probs need logits at every position: those requests prefill alone.
        for h, need in [g for g in group if g[0].req.prompt_logprobs]:
            self._prefill([(h, need)], full_logits=True)
        rest = [g for g in group if not g[0].req.prompt_logprobs]
        if rest:
            self._prefill(rest)

    def _prefill(self, group: list[tuple[Handle, int]], full_logits: bool = False) -> None:
        """One forward over the prompts of `group` (right-padded), then each samples a token.

        Each prompt first takes the longest cached prefix of full KV blocks
        (`BlockPool.match`) and prefills only the rest; at least its last token is always
        run, because its logits give the first sampled token.
        """
        rows, starts, bs = [], [], self.pool.block_size
        for h, reserved in group:
            req = h.req
            T = len(req.prompt_ids)
            shared = [] if full_logits else self.pool.match(req.prompt_ids, (T - 1) // bs)
            blocks = shared + self.pool.alloc(self.pool.blocks_for(T + 1) - len(shared))
            gen = torch.Generator(device=self.device)
            gen.manual_seed(req.seed if req.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
            rows.append(_Row(h, blocks, reserved, 0, -1, gen, IncrementalDecoder(self.tok), StopStringHolder(req.stop),
                             tokens=list(req.prompt_ids)))
            starts.append(len(shared) * bs)
        self._rows += rows
        new = [len(r.tokens) - s for r, s in zip(rows, starts)]
        ids = torch.zeros(len(rows), max(new), dtype=torch.long, device=self.device)
        for i, (r, s) in enumerate(zip(rows, starts)):
            ids[i, :new[i]] = torch.tensor(r.tokens[s:], dtype=torch.long)
        view = self.pool.bind([r.blocks for r in rows], starts, new)
        hidden = self.model.model(ids, view.positions, view, view.mask)          # [B, T, D]
        if full_logits:
            all_logits = self.model.lm_head(hidden)                              # B == 1, start 0 here
            last = all_logits[:, new[0] - 1]
        else:  # the lm_head only where a next token is sampled: each row's last prompt token
            last = self.model.lm_head(hidden[torch.arange(len(rows)), torch.tensor(new) - 1])
        for i, (row, s) in enumerate(zip(rows, starts)):
            T = len(row.tokens)
            row.length = T
            self.pool.register(row.blocks, row.tokens)   # later requests can share this prompt
            first = Event(prompt_tokens=T)
            if full_logits:
                lp = torch.log_softmax(all_logits[0, :T - 1].float(), dim=-1)
                first.prompt_logprobs = [None] + lp.gather(1, ids[0, 1:T, None])[:, 0].tolist()
            self.stats["prompt_tokens"] += T
            self.stats["prefix_hit_tokens"] += s
            self.stats["prefills"] += 1
            self._emit(row, last[i], first)
        self.stats["prefill_forwards"] += 1

    def _step(self) -> None:
        rows = self._rows
        for r in rows:  # grow each row's table to hold the token written this step
            if r.length + 1 > len(r.blocks) * self.pool.block_size:
                r.blocks += self.pool.alloc(1)
        ids = torch.tensor([[r.last] for r in rows], dtype=torch.long, device=self.device)
        view = self.pool.bind([r.blocks for r in rows], [r.length for r in rows], [1] * len(rows))
        logits = self.model(ids, positions=view.positions, cache=view, attn_mask=view.mask)[:, -1]
        self.stats["steps"] += 1
        self.stats["batched_rows"] += len(rows)
        for i, r in enumerate(list(rows)):
            r.length += 1
            r.tokens.append(r.last)
            self._emit(r, logits[i], Event())

    def _emit(self, row: _Row, logits: torch.Tensor, ev: Event) -> None:
        """Sample row's next token from logits [V], send its text, finish it if done."""
        req = row.handle.req
        scores = logits.float()[None]
        if req.constraint is not None:
            scores = scores.clone() if scores.data_ptr() == logits.data_ptr() else scores
            req.constraint.apply(scores, req.max_tokens - row.generated)
        scores = process_logits(scores, req.params)
        if req.params.greedy:
            tok = int(torch.argmax(scores, dim=-1))
        else:
            tok = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=row.generator))
        row.generated += 1
        self.stats["completion_tokens"] += 1
        self._recent.append((time.monotonic(), 1))
        ev.token_ids = [tok]
        ev.prompt_tokens, ev.completion_tokens = len(req.prompt_ids), row.generated
        if req.logprobs is not None:
            lp = torch.log_softmax(logits.float(), dim=-1)
            top = torch.topk(lp, req.logprobs) if req.logprobs > 0 else None
            ev.logprobs = [TokenLogprob(tok, float(lp[tok]),
                                        [] if top is None else list(zip(top.indices.tolist(), top.values.tolist())))]
        finish = None
        if tok in req.stop_ids:
            finish, ev.logprobs, ev.token_ids = "stop", [], []
        else:
            if req.constraint is not None:
                req.constraint.advance(tok)
            text, hit = row.holder.push(row.dec.push(tok))
            ev.text = text
            if hit:
                finish = "stop"
            elif req.constraint is not None and req.constraint.done():
                finish = "stop"
            elif row.generated >= req.max_tokens:
                finish = "length"
        if finish is None:
            row.last = tok
            row.handle._put(ev)
            return
        if finish != "stop" or not row.holder.stopped:
            # End of output: release text held for a stop string or an incomplete character.
            tail, hit = row.holder.push(row.dec.flush())
            ev.text += tail + ("" if hit else row.holder.flush())
        self._finish(row, finish, ev)

    def _finish(self, row: _Row, reason: str, ev: Event | None = None, error: str | None = None) -> None:
        ev = ev or Event(prompt_tokens=len(row.handle.req.prompt_ids), completion_tokens=row.generated)
        ev.finish_reason, ev.error = reason, error
        self._rows.remove(row)
        if reason != "error":  # after a failed forward the blocks may hold partial writes
            # Keep the conversation so far findable: the next turn of a chat starts with it.
            self.pool.register(row.blocks, row.tokens)
        self.pool.free(row.blocks)
        with self._cv:
            self._reserved -= row.reserved
        self.stats["finished_" + reason] += 1
        row.handle._put(ev)

