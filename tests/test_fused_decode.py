"""The fused batch-1 decode step (olmo2/infer/fused.py + olmo2/quant/native/decode.c).

References: each native glue function against a float64 torch computation of the same
formula (the model's RMSNorm, rotate-half RoPE, softmax attention, SiLU); the whole step
against the model's uncached forward — itself bit-exact with transformers (test_model.py)
— and against the aten step it replaces (`OLMO2_FUSED_DECODE=0`), on tiny models with
grouped-query attention, fp32 and int4 weights.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from olmo2.config import ModelConfig
from olmo2.infer import fused
from olmo2.infer.decoder import Decoder
from olmo2.model import Olmo2
from olmo2.quant import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.reason()}")

# head_dim 16 (the smallest decode.c takes), 4 query heads per KV head
CFG = ModelConfig(vocab_size=211, d_model=128, n_layers=3, n_heads=8, n_kv_heads=2, d_ff=96, max_seq_len=256)


def tiny(seed: int = 0) -> Olmo2:
    torch.manual_seed(seed)
    m = Olmo2(CFG.replace(init_std=0.08)).eval()
    m.reset_parameters()
    return m


def ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


def aten_decoder(monkeypatch, m, cap):
    with monkeypatch.context() as mp:
        mp.setenv("OLMO2_FUSED_DECODE", "0")
        d = Decoder(m, 1, cap)
    assert d.fused_off == "off (OLMO2_FUSED_DECODE=0)"
    return d


def p(t: torch.Tensor) -> int:
    assert t.dtype == torch.float32 and t.is_contiguous()
    return t.data_ptr()


# ---- the glue functions against float64 ---------------------------------------------------
def rms64(x, w, eps):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def test_norms_and_silu_match_float64():
    lib = native._lib()
    g = torch.Generator().manual_seed(0)
    n, eps = 2048, 1e-6
    x, yv, w = (torch.randn(n, generator=g) * 3 for _ in range(3))
    out = torch.empty(n)
    lib.olmo2_rmsnorm(p(x), p(w), eps, n, p(out))
    torch.testing.assert_close(out.double(), rms64(x, w, eps), rtol=2e-6, atol=2e-6 * float(rms64(x, w, eps).abs().max()))
    lib.olmo2_add_rmsnorm(p(x), p(yv), p(w), eps, n, p(out))
    ref = x.double() + rms64(yv, w, eps)
    torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=2e-6 * float(ref.abs().max()))
    # silu over a range that reaches exp's clamps (|g| up to 200) and its polynomial's middle
    gate = torch.cat([torch.linspace(-200, 200, 1024), torch.randn(1024, generator=g) * 4])
    up = torch.randn(2048, generator=g)
    lib.olmo2_silu_mul(p(gate), p(up), 2048, p(out))
    ref = F.silu(gate.double()) * up.double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)


def attn64(q, k, v, qnw, knw, eps, cos, sin, kc, vc, pos, H, Hkv, D, scale):
    """The eager step's formulas in float64: QK-norm, rotate-half RoPE, cache write, softmax."""
    q = rms64(q, qnw, eps).view(H, D)
    k = rms64(k, knw, eps).view(Hkv, D)
    c, s = cos.double(), sin.double()

    def rope(t):
        t1, t2 = t.chunk(2, -1)
        return t * c + torch.cat((-t2, t1), -1) * s
    q, k = rope(q), rope(k)
    kc, vc = kc.double().clone(), vc.double().clone()
    kc[:, pos], vc[:, pos] = k, v.double().view(Hkv, D)
    kk = kc[:, :pos + 1].repeat_interleave(H // Hkv, 0)
    vv = vc[:, :pos + 1].repeat_interleave(H // Hkv, 0)
    att = torch.softmax(torch.einsum("hd,hld->hl", q, kk) * scale, -1)
    return torch.einsum("hl,hld->hd", att, vv).reshape(-1), k, kc, vc


# the last case fills 4.7 MiB of cache: past decode.c's 1 MiB, its heads split over threads
@pytest.mark.parametrize("H,Hkv,D,pos,cap", [(8, 2, 16, 0, 4), (16, 16, 128, 37, 64), (4, 1, 64, 255, 256),
                                             (16, 16, 128, 300, 320)])
def test_attn_step_matches_float64(H, Hkv, D, pos, cap):
    lib = native._lib()
    g = torch.Generator().manual_seed(pos)
    eps, scale = 1e-6, D ** -0.5
    q, qnw = torch.randn(H * D, generator=g) * 2, torch.rand(H * D, generator=g) + 0.5
    k, knw = torch.randn(Hkv * D, generator=g) * 2, torch.rand(Hkv * D, generator=g) + 0.5
    v = torch.randn(Hkv * D, generator=g)
    ang = torch.rand(D // 2, generator=g) * 6
    cos, sin = torch.cat([ang.cos()] * 2), torch.cat([ang.sin()] * 2)
    kc, vc = torch.randn(Hkv, cap, D, generator=g), torch.randn(Hkv, cap, D, generator=g)
    ref, k_ref, kc_ref, vc_ref = attn64(q, k, v, qnw, knw, eps, cos, sin, kc, vc, pos, H, Hkv, D, scale)
    outs = []
    for threads in (1, 2, 3):
        qq, kk, kcc, vcc, y = q.clone(), k.clone(), kc.clone(), vc.clone(), torch.empty(H * D)
        assert lib.olmo2_attn_step(threads, p(qq), p(kk), p(v), p(qnw), p(knw), eps, p(cos), p(sin), p(kcc), p(vcc),
                                   cap, pos, H, Hkv, D, scale, p(y)) == 0
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kcc.double(), kc_ref, rtol=1e-5, atol=1e-5)  # the rotated key, written at pos
        assert torch.equal(vcc.double(), vc_ref)                                 # v copied as is, nothing else touched
        outs.append(y)
    assert all(torch.equal(outs[0], o) for o in outs[1:])  # heads split over threads: same sums


# ---- the whole step ------------------------------------------------------------------------
@torch.inference_mode()
def test_fused_step_matches_the_uncached_forward_and_the_aten_step(monkeypatch):
    m = tiny()
    x = ids(48)
    full = m(x)[0]                                  # logits at every position, no cache
    fz, ref = Decoder(m, 1, 64), aten_decoder(monkeypatch, m, 64)
    assert fz.fused_off == ""
    fz.start(x[:, :16])
    ref.start(x[:, :16])
    for t in range(16, 48):                         # teacher-forced: the same token into both
        a, b = fz.step(x[:, t]), ref.step(x[:, t])
        scale = full[t].abs().max()
        assert (a[0] - full[t]).abs().max() <= 1e-5 * scale
        assert (a - b).abs().max() <= 1e-5 * scale
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert fz.cache.length == ref.cache.length == 48
    # the cache the fused step wrote is the one the next prefill reuses: a new prompt that
    # extends the held ids prefills only its tail and matches a fresh prefill
    longer = torch.cat([x, ids(5, seed=7)], 1)
    got = fz.start(longer)
    assert fz.reused == 48
    torch.testing.assert_close(got, Decoder(m, 1, 64).start(longer), rtol=0, atol=1e-5 * float(got.abs().max()))


@pytest.mark.parametrize("fmt", ["int8", "int4", "bf16", "f32-native", "int4-unbound"])
@torch.inference_mode()
def test_fused_step_on_each_weight_format_stays_within_its_own_noise(monkeypatch, fmt):
    """Quantized linears round their input (int4 per 32 columns to int8), so a last-bit
    change upstream can move a rounding and the logits by ~1%; the aten step already
    differs that much from the forward, whose prefill kernels round the same inputs. The
    fused step must stay within that noise of the aten step and pick the same argmax almost
    always (top-2 gaps of this tiny model go down to 0.1% of the logit range; chance would
    be 1 in 211). Every linear must run its bound native kernel (`native.bind`), except in
    "int4-unbound", whose d_ff of 96 fits no native kernel: the module-call fallback."""
    import functools

    from olmo2.quant.f32 import use_native_f32
    from olmo2.quant.swap import quantize_model
    torch.manual_seed(3)
    m = Olmo2(CFG.replace(init_std=0.08, d_ff=96 if fmt == "int4-unbound" else 128)).eval()
    m.reset_parameters()
    if fmt == "f32-native":  # what an AVX2-only CPU runs for fp32 decode (float.c)
        monkeypatch.setenv("OLMO2_QUANT_KERNEL", "native")
        assert use_native_f32(m) == 3 * 7 + 1
    else:
        m = quantize_model(m, fmt.split("-")[0], group_size=32) if "int4" in fmt else quantize_model(m, fmt)
    x = ids(50)
    full = m(x)[0]
    fz, ref = Decoder(m, 1, 60), aten_decoder(monkeypatch, m, 60)
    assert fz.fused_off == ""
    bound = [isinstance(r, functools.partial) for plan in fz._fused._plan for r in plan[1:]]
    assert all(bound) if fmt != "int4-unbound" else bound.count(False) == 3  # down_proj of each layer
    fz.start(x[:, :10])
    ref.start(x[:, :10])
    d_fused, d_aten, agree = [], [], 0
    for t in range(10, 50):
        a, b = fz.step(x[:, t]), ref.step(x[:, t])
        agree += int(torch.equal(a.argmax(-1), b.argmax(-1)))
        d_fused.append(float((a - b).abs().max()))
        d_aten.append(max(float((b[0] - full[t]).abs().max()), 1e-5 * float(full[t].abs().max())))
    assert max(d_fused) <= 2 * max(d_aten), (max(d_fused), max(d_aten))
    assert agree >= 37, agree


def test_why_not_refuses_what_it_does_not_reproduce(monkeypatch):
    m = tiny()
    assert fused.why_not(m, 1) == ""
    assert fused.why_not(m, 2) == "batch > 1"
    assert fused.why_not(Olmo2(CFG.replace(n_heads=16)).eval(), 1) == "unsupported shape"  # head_dim 8
    assert fused.why_not(tiny().to(torch.bfloat16), 1) == "activations are not fp32 on the CPU"
    h = m.model.layers[1].mlp.register_forward_hook(lambda *a: None)
    assert fused.why_not(m, 1) == "the model has forward hooks"
    h.remove()
    dec = Decoder(m, 1, 8)
    assert dec.fused_off == ""
    h = m.model.layers[0].register_forward_pre_hook(lambda *a: None)  # added after the Decoder was made
    dec.start(ids(3))
    assert dec.fused_off == "the model has forward hooks" and dec._fused is None
    h.remove()
    monkeypatch.setenv("OLMO2_FUSED_DECODE", "0")
    assert fused.why_not(m, 1) == "off (OLMO2_FUSED_DECODE=0)"
    assert Decoder(m, 1, 8, compile=False).fused_off == "off (OLMO2_FUSED_DECODE=0)"


@torch.inference_mode()
def test_padded_prompts_take_the_aten_step(monkeypatch):
    """A left-padded row's positions are not its cache slots: the Decoder must not fuse it."""
    m = tiny()
    x = ids(8)
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[0, :3] = False
    fz, ref = Decoder(m, 1, 20), aten_decoder(monkeypatch, m, 20)
    la, lb = fz.start(x, mask), ref.start(x, mask)
    for _ in range(5):
        tok = lb.argmax(-1)
        la, lb = fz.step(tok), ref.step(tok)
        assert torch.equal(la, lb)  # the same aten path, bit for bit


def test_fused_step_refuses_a_position_outside_the_cache():
    m = tiny()
    step = fused.FusedStep(m)
    from olmo2.infer.kvcache import KVCache
    cache = KVCache.for_model(m, 1, 4, zeroed=True)
    with pytest.raises(ValueError, match="outside the cache"):
        step(torch.tensor([1]), cache, 4)
