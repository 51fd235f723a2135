"""Inference weights in a huge-page arena (olmo2/infer/hugepages.py): the same bits, the
same logits and tokens, every streamed tensor moved once, the embedding left alone, the
sources let go, and the cases where it does not apply."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from olmo2.config import ModelConfig
from olmo2.infer import hugepages
from olmo2.model import Olmo2

# tensors of 256 KiB and more (MIN_BYTES is 64 KiB), so each format has some to move
CFG = dict(vocab_size=4096, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=1024, max_seq_len=64,
           eos_token_id=1, pad_token_id=2)
needs_thp = pytest.mark.skipif(bool(hugepages.why_not(nn.Linear(1, 1))),
                               reason=f"huge pages do not apply here: {hugepages.why_not(nn.Linear(1, 1))}")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from olmo2.checkpoint import save_model
    torch.manual_seed(0)
    m = Olmo2(ModelConfig(**CFG))
    m.reset_parameters()
    out = tmp_path_factory.mktemp("hp") / "ck"
    save_model(m.eval(), out)
    return out


def _load(ckpt, quant, huge: bool):
    from olmo2.checkpoint import load_model
    old = os.environ.get("OLMO2_HUGEPAGES")
    os.environ["OLMO2_HUGEPAGES"] = "1" if huge else "0"
    try:
        return load_model(ckpt, quant=quant)
    finally:
        if old is None:
            del os.environ["OLMO2_HUGEPAGES"]
        else:
            os.environ["OLMO2_HUGEPAGES"] = old


def _greedy(dec, n: int = 12) -> list[int]:
    """`n` greedy tokens of Decoder `dec` after a fixed 16-token prompt."""
    with torch.inference_mode():
        nxt = dec.start(torch.arange(3, 19)[None]).argmax(-1)
        out = []
        for _ in range(n):
            nxt = dec.step(nxt).argmax(-1)
            out.append(int(nxt))
    return out


@needs_thp
@pytest.mark.parametrize("quant", ["none", "bf16", "int8", "int4"])
def test_inference_load_moves_streamed_tensors_same_logits(ckpt, quant):
    plain, huge = _load(ckpt, quant, False), _load(ckpt, quant, True)
    assert plain.hugepages is None and huge.hugepages is not None
    arena = huge.hugepages
    sd_plain, sd_huge = plain.state_dict(), huge.state_dict()
    assert sd_plain.keys() == sd_huge.keys()
    moved = 0
    for k, t in sd_huge.items():
        assert torch.equal(t, sd_plain[k]), k  # the same bits
        big = t.numel() * t.element_size() >= hugepages.MIN_BYTES
        if k.startswith("model.embed_tokens."):
            assert not arena.contains(t), f"{k}: the embedding table is only indexed, it stays put"
        elif big:
            assert arena.contains(t), f"{k} ({t.numel() * t.element_size()} bytes) was not moved"
            moved += 1
        else:
            assert not arena.contains(t), k
    assert moved >= 7  # at least the 2 x 7 block linears or their codes, whatever the format
    assert arena.used <= arena.size < arena.used + 2 * hugepages.HUGE
    ids = torch.randint(0, CFG["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(plain(ids), huge(ids))


@needs_thp
def test_decoder_tokens_equal_after_the_move(ckpt):
    """The fused step binds the kernels to the moved tensors (load happens before the Decoder)."""
    from olmo2.infer.decoder import Decoder
    toks = []
    for huge in (False, True):
        m = _load(ckpt, "int4", huge)
        dec = Decoder(m, 1, 40)
        toks.append(_greedy(dec))
    assert toks[0] == toks[1]


@needs_thp
def test_arena_is_marked_for_huge_pages():
    a = hugepages.Arena(6 << 20)
    assert a.base % hugepages.HUGE == 0
    t = a.place(torch.arange(6 << 18, dtype=torch.float32))  # 6 MiB
    assert torch.equal(t, torch.arange(6 << 18, dtype=torch.float32)) and a.contains(t)
    # the kernel's own word that the madvise took: the mapping may get huge pages (how many
    # it does get depends on free memory; a.huge_bytes() reports it, benchmarks print it)
    assert hugepages.smaps_field(a.base, "THPeligible") == 1
    assert 0 <= a.huge_bytes() <= a.size
    with pytest.raises(ValueError, match="no room"):
        a.place(torch.zeros(1 << 20))


@needs_thp
def test_shared_tensor_moved_once_and_sources_released():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(256, 256, bias=False), nn.Linear(256, 256, bias=False)
            self.b.weight = self.a.weight  # one Parameter under two modules
            self.register_buffer("c", torch.randn(128, 256))
            self.register_buffer("small", torch.randn(8))
    m = Two()
    w0, c0 = m.a.weight.detach().clone(), m.c.clone()
    param = m.a.weight
    released = []
    arena = hugepages.into_huge_pages(m, release=lambda t: released.append(t.numel()) or True)
    assert arena is not None and m.a.weight is param and m.b.weight is param  # identity kept
    assert arena.contains(m.a.weight) and arena.contains(m.c) and not arena.contains(m.small)
    assert torch.equal(m.a.weight, w0) and torch.equal(m.c, c0)
    assert sum(released) == 256 * 256 * 4 + 128 * 256 * 4  # every source byte once, in blocks
    assert arena.used == 256 * 256 * 4 + 128 * 256 * 4


@needs_thp
def test_owned_sources_are_dropped_block_by_block(monkeypatch):
    """`owned`: each block of a source is dropped as soon as it is copied (the load's
    transient is one block, not the largest tensor)."""
    monkeypatch.setattr(hugepages, "BLOCK", 1 << 20)  # several blocks in a 4 MiB tensor
    dropped = []
    monkeypatch.setattr(hugepages, "_drop_pages", lambda t: dropped.append(t.numel()))
    lin = nn.Linear(1024, 1024, bias=False)
    want = lin.weight.detach().clone()
    arena = hugepages.into_huge_pages(lin, owned=True)
    assert torch.equal(lin.weight, want) and arena.contains(lin.weight)
    assert len(dropped) >= 4 and sum(dropped) == 1024 * 1024 * 4  # every byte, block by block


@needs_thp
def test_owned_source_with_another_user_is_left_intact():
    """Even when the caller vouches for `owned`, a source whose storage has another user (a
    view; a packed copy built around it) is never dropped: that user reads it afterwards."""
    lin = nn.Linear(1024, 1024, bias=False)
    other = lin.weight.detach()  # shares the storage, as a kernel's packed wrapper might
    want = other.clone()
    hugepages.into_huge_pages(lin, owned=True)
    assert torch.equal(other, want) and torch.equal(lin.weight, want)


def test_drop_pages_zeroes_whole_inner_pages_only():
    buf = torch.arange(1, 5 * 4096 // 4 + 1, dtype=torch.float32)  # 5 pages' worth, no zero in it
    want = buf.clone()
    part = buf[100:-100]
    hugepages._drop_pages(part)
    zero = buf == 0
    assert zero.sum() >= 3 * 1024 - 1 and not zero[:100].any() and not zero[-100:].any()
    assert torch.equal(buf[~zero], want[~zero])


def test_off_switch_training_loads_and_thp_mode(ckpt, tmp_path, monkeypatch):
    from olmo2.checkpoint import load_model
    monkeypatch.setenv("OLMO2_HUGEPAGES", "0")
    m = load_model(ckpt, quant="int8")
    assert m.hugepages is None and hugepages.why_not(m) == "OLMO2_HUGEPAGES=0"
    monkeypatch.delenv("OLMO2_HUGEPAGES")
    assert getattr(load_model(ckpt), "hugepages", None) is None  # quant=None: training, conversion
    f = tmp_path / "enabled"
    for text, mode in (("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                       ("always madvise [never]", "never"), ("garbage", "")):
        f.write_text(text)
        assert hugepages.thp_mode(str(f)) == mode
    assert hugepages.thp_mode(str(tmp_path / "absent")) == ""
    monkeypatch.setattr(hugepages, "thp_mode", lambda path=None: "never")
    assert hugepages.why_not(m) == "transparent huge pages are never in this kernel"
    assert hugepages.into_huge_pages(m) is None


def test_why_not_never_builds_a_state_dict(ckpt, monkeypatch):
    """A quantized embedding table's state_dict converts the whole mapped fp32 table (0.77
    GiB of file pages read, seconds of work for the 1B): the check must not call it."""
    from olmo2.checkpoint import load_model
    monkeypatch.setenv("OLMO2_HUGEPAGES", "0")
    m = load_model(ckpt, quant="int8")
    monkeypatch.delenv("OLMO2_HUGEPAGES")
    monkeypatch.setattr(m, "state_dict", lambda *a, **k: pytest.fail("state_dict() called"))
    hugepages.why_not(m)


@needs_thp
@pytest.mark.parametrize("quant", ["int8", "none"])
def test_a_fresh_load_lets_every_source_block_go(ckpt, monkeypatch, quant):
    """What keeps the load's peak at the weights plus one block: a quantized load's own heap
    tensors are sole users of their storage, so their pages are dropped; an fp32 load's
    mapped checkpoint pages are released to the file instead."""
    from olmo2 import checkpoint
    dropped, released = [], []
    monkeypatch.setattr(hugepages, "_drop_pages", lambda t: dropped.append(t.numel()))
    real = checkpoint.release_pages
    monkeypatch.setattr(checkpoint, "release_pages", lambda t: real(t) and not released.append(t.numel()))
    m = _load(ckpt, quant, True)
    moved = sum(t.numel() * t.element_size() for t in m.state_dict().values() if m.hugepages.contains(t))
    if quant == "none":
        assert sum(released) == moved and not dropped
    else:
        assert sum(dropped) == moved  # (released: the quantizer's own drops of the fp32 pages)


@needs_thp
def test_decoder_cache_in_huge_pages_same_tokens(ckpt, monkeypatch):
    """A zeroed KV cache from HUGE_CACHE_BYTES up lives in an arena (a long chat's cache is
    streamed every step): zeros to start with, the same tokens as torch's buffers."""
    from olmo2.infer import kvcache
    from olmo2.infer.decoder import Decoder
    m = _load(ckpt, "int8", True)
    made = []  # the cache's arenas, counted (where plain buffers land in memory is torch's affair)

    class Counted(hugepages.Arena):
        def __init__(self, nbytes):
            super().__init__(nbytes)
            made.append(self)
    monkeypatch.setattr(hugepages, "Arena", Counted)
    toks = []
    for huge in (False, True):
        monkeypatch.setattr(kvcache, "HUGE_CACHE_BYTES", 1 if huge else 1 << 60)
        dec = Decoder(m, 1, 48)
        assert len(made) == huge
        if huge:  # every buffer in the arena, and the kernel's own word that it may get huge pages
            assert all(made[0].contains(t) for t in dec.cache.k + dec.cache.v)
            assert hugepages.smaps_field(dec.cache.k[0].data_ptr(), "THPeligible") == 1
        assert not any(t.any() for t in dec.cache.k + dec.cache.v)  # zeroed either way
        toks.append(_greedy(dec))
    assert toks[0] == toks[1]
    monkeypatch.setenv("OLMO2_HUGEPAGES", "0")
    kvcache.KVCache(2, 1, 2, 64, 64, zeroed=True)
    monkeypatch.delenv("OLMO2_HUGEPAGES")
    kvcache.KVCache(2, 1, 2, 64, 64)  # the prefix path's cache (torch.empty): never an arena
    assert len(made) == 1
