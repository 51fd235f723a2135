"""The serving engine: block KV cache exactness, continuous batching equals decoding alone
(and `olmo2.infer.generate`), joining mid-flight, cancel frees blocks, bounded queue, seeds."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("xgrammar")

from olmo2.checkpoint import load_model
from olmo2.infer.generate import generate, stream_generate
from olmo2.infer.kvcache import KVCache
from olmo2.infer.sampling import SamplingParams
from olmo2.serve.engine import Engine, EngineConfig, GenRequest, QueueFull
from olmo2.serve.kvblocks import BlockPool
from olmo2.tokenizer import Tokenizer
from serve_fixtures import serve_ckpt  # noqa: F401 (fixture)

PROMPTS = ["The king said", "Hello there my friend, how are", "a",
           "Once upon a time in a land far away there lived a", "1 + 1 ="]


@pytest.fixture(scope="module")
def mt(serve_ckpt):
    model = load_model(serve_ckpt).eval()
    with torch.no_grad():  # scale up so greedy continuations vary instead of repeating a token
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(3.0)
    return model, Tokenizer.from_pretrained(serve_ckpt)


def tokens_of(handle) -> list[int]:
    return [t for ev in handle.events() for t in ev.token_ids]


def reference(model, ids: list[int], n: int) -> list[int]:
    out = generate(model, [ids], n, temperature=0, eos_token_id=[])
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("int8", [False, True])
def test_block_cache_matches_kvcache(mt, int8):
    model, tok = mt
    ids = torch.tensor([tok.encode(PROMPTS[3])])
    T = ids.shape[1]
    with torch.no_grad():
        ref_cache = KVCache.for_model(model, 1, T + 8)
        ref = [model(ids, cache=ref_cache)[:, -1]]
        pool = BlockPool.for_model(model, n_blocks=16, block_size=4, int8=int8)
        blocks = pool.alloc(pool.blocks_for(T + 8))
        view = pool.bind([blocks], [0], [T])
        got = [model(ids, positions=view.positions, cache=view, attn_mask=view.mask)[:, -1]]
        nxt = ref[0].argmax(-1)
        for step in range(8):
            ref.append(model(nxt[:, None], cache=ref_cache)[:, -1])
            view = pool.bind([blocks], [T + step], [1])
            got.append(model(nxt[:, None], positions=view.positions, cache=view, attn_mask=view.mask)[:, -1])
            nxt = ref[-1].argmax(-1)
    err = max(float((a - b).abs().max()) for a, b in zip(ref, got))
    assert err < (0.05 if int8 else 1e-4), err
    if not int8:
        assert all(torch.equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(ref, got))
    assert BlockPool.for_model(model, 16, 4, int8=True).nbytes() < BlockPool.for_model(model, 16, 4).nbytes() / 3


def test_batched_equals_alone_and_generate(mt):
    model, tok = mt
    lens = [8, 14, 5, 11, 6]
    reqs = [GenRequest(tok.encode(p), n) for p, n in zip(PROMPTS, lens)]
    refs = [reference(model, r.prompt_ids, r.max_tokens) for r in reqs]   # each decoded alone
    eng = Engine(model, tok, EngineConfig(max_batch=8, block_size=4))
    handles = [eng.submit(r) for r in reqs]   # all waiting before the first step
    eng.start()
    try:
        assert [tokens_of(h) for h in handles] == refs
        assert eng.stats["prefill_forwards"] == 1                # one right-padded prefill for all five
        assert eng.stats["batched_rows"] > eng.stats["steps"]  # rows really shared decode forwards
        assert eng.pool.free_blocks == eng.pool.n_blocks       # everything given back
    finally:
        eng.shutdown()


def test_request_joins_running_batch(mt):
    model, tok = mt
    a = GenRequest(tok.encode(PROMPTS[0]), 40)
    b = GenRequest(tok.encode(PROMPTS[1]), 10)
    eng = Engine(model, tok, EngineConfig(max_batch=4, block_size=4)).start()
    try:
        ha = eng.submit(a)
        events = ha.events()
        first = [next(events) for _ in range(5)]       # a is decoding on its own
        hb = eng.submit(b)                              # b joins at the next step
        got_b = tokens_of(hb)
        got_a = [t for ev in first for t in ev.token_ids] + [t for ev in events for t in ev.token_ids]
        assert got_a == reference(model, a.prompt_ids, 40)
        assert got_b == reference(model, b.prompt_ids, 10)
        assert eng.stats["batched_rows"] >= eng.stats["steps"] + 9   # b's steps were shared with a
    finally:
        eng.shutdown()


def test_cancel_frees_slot_and_blocks(mt):
    model, tok = mt
    eng = Engine(model, tok, EngineConfig(max_batch=1, block_size=4)).start()
    try:
        h = eng.submit(GenRequest(tok.encode(PROMPTS[2]), 400))
        events = h.events()
        next(events), next(events)
        h.cancel()
        assert [ev.finish_reason for ev in events][-1] == "cancelled"
        assert eng.pool.free_blocks == eng.pool.n_blocks
        r = GenRequest(tok.encode(PROMPTS[0]), 5)       # the one slot is free again
        assert tokens_of(eng.submit(r)) == reference(model, r.prompt_ids, 5)
    finally:
        eng.shutdown()


def test_bounded_queue_and_request_limit(mt):
    model, tok = mt
    eng = Engine(model, tok, EngineConfig(max_batch=1, max_queue=2))   # not started: nothing drains
    eng.submit(GenRequest([1, 2], 4))
    eng.submit(GenRequest([1, 2], 4))
    with pytest.raises(QueueFull):
        eng.submit(GenRequest([1, 2], 4))
    with pytest.raises(ValueError):
        eng.submit(GenRequest([1, 2], eng.max_request_tokens()))


def test_seeded_sampling_does_not_depend_on_batch_mates(mt):
    model, tok = mt
    r = GenRequest(tok.encode(PROMPTS[0]), 12, params=SamplingParams(temperature=1.0, top_p=0.9), seed=7)
    eng = Engine(model, tok, EngineConfig(max_batch=4)).start()
    try:
        alone = tokens_of(eng.submit(r))
        mates = [eng.submit(GenRequest(tok.encode(p), 12, params=SamplingParams(1.0), seed=i))
                 for i, p in enumerate(PROMPTS[1:])]
        again = tokens_of(eng.submit(r))
        for m in mates:
            tokens_of(m)
        other = tokens_of(eng.submit(GenRequest(r.prompt_ids, 12, params=r.params, seed=8)))
    finally:
        eng.shutdown()
    assert alone == again and alone != other


def test_stop_strings_and_eos_match_stream_generate(mt):
    model, tok = mt
    ids = tok.encode(PROMPTS[3])
    full = tok.decode(reference(model, ids, 20), skip_special_tokens=True)
    stop = full[len(full) // 2: len(full) // 2 + 3]
    expect = "".join(stream_generate(model, tok, ids, 20, temperature=0, stop_strings=[stop], eos_token_id=[]))
    eng = Engine(model, tok, EngineConfig()).start()
    try:
        evs = list(eng.submit(GenRequest(ids, 20, stop=[stop])).events())
    finally:
        eng.shutdown()
    assert "".join(e.text for e in evs) == expect and stop not in expect
    assert evs[-1].finish_reason == "stop"


def test_shared_prefix_is_reused_not_recomputed(mt):
    model, tok = mt
    system = tok.encode("You are a helpful assistant who answers in one short sentence. " * 3)
    a, b = system + tok.encode(" First question?"), system + tok.encode(" Another, different one?")
    eng = Engine(model, tok, EngineConfig(max_batch=4, block_size=4)).start()
    try:
        got_a = tokens_of(eng.submit(GenRequest(a, 6)))
        assert eng.stats["prefix_hit_tokens"] == 0
        got_b = tokens_of(eng.submit(GenRequest(b, 6)))
        shared = eng.stats["prefix_hit_tokens"]
        assert shared >= len(system) - 4                      # all full blocks of the common prefix
        # The next turn of a conversation reuses the previous turn, reply included.
        turn2 = a + got_a + tok.encode(" And then?")
        got_c = tokens_of(eng.submit(GenRequest(turn2, 6)))
        assert eng.stats["prefix_hit_tokens"] - shared >= len(a) + len(got_a) - 1 - 4
        assert eng.pool.free_blocks == eng.pool.n_blocks      # cached blocks stay evictable
    finally:
        eng.shutdown()
    assert got_a == reference(model, a, 6) and got_b == reference(model, b, 6)
    assert got_c == reference(model, turn2, 6)


def test_prefix_cache_evicts_under_pressure(mt):
    model, tok = mt
    eng = Engine(model, tok, EngineConfig(max_batch=2, block_size=4, kv_tokens=64)).start()   # 16 blocks
    try:
        for i in range(6):   # each leaves ~5 cached blocks: the pool must evict to admit the next
            p = tok.encode(f"Distinct prompt number {i} with some words to fill blocks")
            assert tokens_of(eng.submit(GenRequest(p, 8))) == reference(model, p, 8)
        assert eng.pool.free_blocks == eng.pool.n_blocks and eng.pool.cached_blocks <= 16
    finally:
        eng.shutdown()
