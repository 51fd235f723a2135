"""The `native` eval backend: olmo2's own model, with the few-shot prefix computed once.

    backend = NativeBackend(model, tokenizer, batch_size="auto")
    backend.loglikelihood([LoglikRequest(ctx, " choice"), ...])
    backend.generate_until(prompts, stops=["\\n\\n"], max_new_tokens=512)

Eval prompts are mostly the same few-shot block followed by a short item. So each call
finds the longest token prefix shared by its long contexts (the shots), runs it through
the model ONCE (batch 1) and keeps its keys/values; each batch then prefills only the
per-item suffixes on top of it, and — for log-likelihoods — each context's choices are
scored as one chunk on top of that context. A 6-shot TruthfulQA question costs its own
~20 tokens plus its choices instead of ~250 tokens per choice; an 8-shot GSM8K problem
its question instead of ~900 tokens.

Memory and speed: the layers see their keys through `PrefixCache` (olmo2/infer/prefix_cache.py):
the shared prefix is one batch-1 tensor per layer that attention reads once per batch (never
expanded to the rows), per-context suffixes are gathered per choice row, and each row's
own tokens go to a writable tail.

Right padding everywhere: suffixes and continuations are padded at their ends and masked
as keys; pad slots get clamped positions and their outputs are never read.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from olmo2.errors import GenerationError
from olmo2.eval.scoring import LoglikRequest, LoglikResult, cut_at_stops, encode_pair, rows_per_step
from olmo2.infer.prefix_cache import PrefixCache

MIN_PREFIX = 32  # tokens: shorter shared prefixes are not worth a separate pass


def common_prefix(seqs: list[Sequence[int]]) -> tuple[int, ...]:
    """Longest common token prefix of the sequences."""
    if not seqs:
        return ()
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return tuple(first[:n])


class NativeBackend:
    """olmo2's model: shared few-shot prefix computed once, contexts once, choices as chunks."""

    name = "native"

    def __init__(self, model, tokenizer, batch_size: int | str = "auto", model_path: str = ""):
        self.model, self.tok = model, tokenizer
        self.batch_size = batch_size
        self.model_path = model_path
        self.max_length = model.config.max_seq_len
        self.eos_id = tokenizer.eos_id
        self._prefix: tuple[tuple[int, ...], list, list] | None = None  # (ids, k layers, v layers)
        self.prefix_tokens_computed = 0  # for tests and the benchmark: prefix work actually done

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def apply_chat_template(self, messages: list[dict]) -> str:
        return self.tok.apply_chat_template(messages, add_generation_prompt=True)

    # ---- shared prefix -----------------------------------------------------------
    def _shared_prefix(self, contexts: list[Sequence[int]]) -> tuple[int, ...]:
        """The prefix to precompute for this call: common to all long contexts, leaving each ≥ 1 own token."""
        long = [c for c in contexts if len(c) > MIN_PREFIX]
        p = common_prefix(long)
        if long:
            p = p[:min(len(c) for c in long) - 1]
        return p if len(p) >= MIN_PREFIX else ()

    def _prefix_kv(self, prefix: tuple[int, ...]):
        if self._prefix is None or self._prefix[0] != prefix:
            from olmo2.infer.kvcache import KVCache
            cache = KVCache.for_model(self.model, 1, len(prefix))
            ids = torch.tensor([prefix], dtype=torch.long, device=self.model.lm_head.weight.device)
            self.model.model(ids, cache=cache)  # hidden states only: no logits needed here
            self._prefix = (prefix, cache.k, cache.v)
            self.prefix_tokens_computed += len(prefix)
        return self._prefix

    def _prefill_suffixes(self, prefix: tuple[int, ...], ctxs: list[Sequence[int]], tail: int):
        """Run each context's tokens after `prefix`; return (cache, suffix lengths, last hidden [G, D])."""
        model, dev = self.model, self.model.lm_head.weight.device
        P, G = len(prefix), len(ctxs)
        sfx = [c[P:] for c in ctxs]
        lens = torch.tensor([len(s) for s in sfx], device=dev)
        S = int(lens.max())
        ids = torch.zeros(G, S, dtype=torch.long, device=dev)
        for g, s in enumerate(sfx):
            ids[g, :len(s)] = torch.tensor(s, dtype=torch.long)
        segs = []
        if P:
            _, pk, pv = self._prefix_kv(prefix)
            segs = [(pk, pv, None)]
        like = model.lm_head.weight.new_empty(1, self.model.config.n_kv_heads, 1, self.model.config.head_dim)
        cache = PrefixCache(segs, G, S + tail, like, model.config.n_layers)
        pos = (P + torch.arange(S, device=dev))[None].expand(G, S).clamp(max=self.max_length - 1)
        keys = torch.ones(G, S, P + S, dtype=torch.bool, device=dev)
        keys[:, :, P:] = torch.ones(S, S, dtype=torch.bool, device=dev).tril()[None] & \
            (torch.arange(S, device=dev)[None, None, :] < lens[:, None, None])
        h = model.model(ids, positions=pos, cache=cache, attn_mask=keys[:, None])
        return cache, lens, h[torch.arange(G, device=dev), lens - 1]

    # ---- log-likelihoods -------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[LoglikRequest], progress=None) -> list[LoglikResult]:
        """One LoglikResult per request, in request order."""
        encoded = [encode_pair(self.encode, r.context, r.continuation) for r in requests]
        for i, (c, x) in enumerate(encoded):
            if len(c) + len(x) > self.max_length:
                raise GenerationError(f"eval request {i}: {len(c) + len(x)} tokens exceed the model context "
                                      f"{self.max_length}; use fewer shots or a longer-context model")
        groups: dict[tuple, list[int]] = {}
        for i, (c, _) in enumerate(encoded):
            groups.setdefault(tuple(c), []).append(i)
        prefix = self._shared_prefix(list(groups))
        order = sorted(groups.items(), key=lambda kv: (-(len(kv[0]) + max(len(encoded[i][1]) for i in kv[1])), kv[1][0]))
        out: list[LoglikResult | None] = [None] * len(requests)
        batch: list[tuple[tuple, list[int]]] = []
        rows = 0
        with torch.inference_mode():
            for ctx, idx in order:
                limit = rows_per_step(self.batch_size, len(ctx) - len(prefix) + max(len(encoded[i][1]) for i in idx),
                                      self.model.config.vocab_size)
                if batch and rows + len(idx) > limit:
                    self._score_groups(prefix, batch, encoded, out, progress)
                    batch, rows = [], 0
                batch.append((ctx, idx))
                rows += len(idx)
            if batch:
                self._score_groups(prefix, batch, encoded, out, progress)
        return out  # type: ignore[return-value]

    def _score_groups(self, prefix, batch, encoded, out, progress) -> None:
        model, dev = self.model, self.model.lm_head.weight.device
        if not all(len(c) > len(prefix) and c[:len(prefix)] == prefix for c, _ in batch):
            prefix = ()  # e.g. OLMES's short unconditional "Answer:" contexts
        P = len(prefix)
        row_group = [g for g, (_, idx) in enumerate(batch) for _ in idx]
        row_req = [i for _, idx in batch for i in idx]
        conts = [encoded[i][1] for i in row_req]
        B, C = len(row_req), max(len(x) for x in conts)
        # 1) Each distinct context once (after the shared prefix); its last position predicts
        #    every choice's first token.
        cache_g, lens, h_last = self._prefill_suffixes(prefix, [c for c, _ in batch], 0)
        first_lp = torch.log_softmax(model.lm_head(h_last).float(), -1)  # [G, V]
        S = cache_g.k[0].shape[2]
        # 2) All choices (minus their last token) as one right-padded chunk per row, on top of
        #    the prefix and the row's own context.
        chunk_lp = None
        if C > 1:
            gi = torch.tensor(row_group, device=dev)
            segs = ([(self._prefix[1], self._prefix[2], None)] if P else []) + [(cache_g.k, cache_g.v, gi)]
            cache = PrefixCache(segs, B, C - 1, cache_g.k[0], model.config.n_layers)
            x = torch.zeros(B, C - 1, dtype=torch.long, device=dev)
            for b, cont in enumerate(conts):
                if len(cont) > 1:
                    x[b, :len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
            rl = lens[gi]
            positions = (P + rl[:, None] + torch.arange(C - 1, device=dev)[None]).clamp(max=self.max_length - 1)
            keys = torch.ones(B, C - 1, P + S + C - 1, dtype=torch.bool, device=dev)
            keys[:, :, P:P + S] = (torch.arange(S, device=dev)[None, :] < rl[:, None])[:, None, :]
            keys[:, :, P + S:] = torch.ones(C - 1, C - 1, dtype=torch.bool, device=dev).tril()[None]
            chunk_lp = torch.log_softmax(model(x, positions=positions, cache=cache, attn_mask=keys[:, None]).float(), -1)
        for b, cont in enumerate(conts):
            tgt = torch.tensor(cont, dtype=torch.long, device=dev)
            lp = first_lp[row_group[b]][None]
            if len(cont) > 1:
                lp = torch.cat([lp, chunk_lp[b, :len(cont) - 1]], 0)  # [n, V]
            tok_lp = lp.gather(-1, tgt[:, None])[:, 0]
            out[row_req[b]] = LoglikResult(float(tok_lp.sum()), bool((lp.argmax(-1) == tgt).all()), len(cont))
        if progress is not None:
            progress.update(B)

    # ---- greedy generation -------------------------------------------------------------
    def generate_until(self, prompts: Sequence[str], stops: Sequence[str], max_new_tokens: int,
                       progress=None) -> list[str]:
        """Greedy continuations of each prompt, cut at the earliest stop string (or EOS)."""
        enc = [self.encode(p) for p in prompts]
        if not enc:
            return []
        prefix = self._shared_prefix(enc)
        order = sorted(range(len(enc)), key=lambda i: (-len(enc[i]), i))
        outs: list[str] = [""] * len(enc)
        longest = max(len(e) for e in enc)
        n_new = min(max_new_tokens, self.max_length - longest)
        if n_new < 1:
            raise GenerationError(f"prompt of {longest} tokens leaves no room to generate in the model "
                                  f"context {self.max_length}")
        bs = rows_per_step(self.batch_size, longest - len(prefix) + n_new)
        with torch.inference_mode():
            for s in range(0, len(order), bs):
                chunk = order[s:s + bs]
                for i, text in zip(chunk, self._greedy(prefix, [enc[i] for i in chunk], stops, n_new)):
                    outs[i] = text
                if progress is not None:
                    progress.update(len(chunk))
        return outs

    def _greedy(self, prefix, prompts: list[list[int]], stops: Sequence[str], n_new: int) -> list[str]:
        model, dev = self.model, self.model.lm_head.weight.device
        if not all(len(p) > len(prefix) and tuple(p[:len(prefix)]) == prefix for p in prompts):
            prefix = ()
        P, G = len(prefix), len(prompts)
        cache, lens, h_last = self._prefill_suffixes(prefix, prompts, n_new)
        S = int(lens.max())
        logits = model.lm_head(h_last)
        gen: list[list[int]] = [[] for _ in range(G)]
        done = [False] * G
        key_ok = torch.ones(G, P + S + n_new, dtype=torch.bool, device=dev)
        key_ok[:, P:P + S] = torch.arange(S, device=dev)[None, :] < lens[:, None]
        live = list(range(G))  # batch row -> prompt index; finished rows leave the batch
        for t in range(n_new):
            toks = logits.argmax(-1).tolist()  # greedy (ties → lowest id, as torch/transformers); one host sync
            for r, g in enumerate(live):
                tid = toks[r]
                if tid == self.eos_id:
                    done[g] = True
                    continue
                gen[g].append(tid)
                if stops and any(st in self.tok.decode(gen[g][-16:], skip_special_tokens=True) for st in stops):
                    done[g] = True
            if all(done) or t == n_new - 1:
                break
            keep = [r for r, g in enumerate(live) if not done[g]]
            tok = torch.tensor([toks[r] for r in keep], dtype=torch.long, device=dev)
            if len(keep) < len(live):
                # Rows that finished stop costing work: drop them from the writable KV tail and
                # every per-row tensor (the shared prefix segment is broadcast, nothing to drop).
                # Row values are unchanged, so outputs equal decoding without compaction.
                idx = torch.tensor(keep, device=dev)
                cache.keep_rows(idx)
                key_ok, lens = key_ok.index_select(0, idx), lens.index_select(0, idx)
                live = [live[r] for r in keep]
            pos = (P + lens + t).clamp(max=self.max_length - 1)[:, None]
            mask = key_ok[:, None, None, :P + S + t + 1]
            logits = model(tok[:, None], positions=pos, cache=cache, attn_mask=mask)[:, -1]
        return [cut_at_stops(self.tok.decode(g, skip_special_tokens=True), stops) for g in gen]
