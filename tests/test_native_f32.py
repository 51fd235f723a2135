"""olmo2's fp32 GEMV (olmo2/quant/native/float.c, native.f32_mm) and NativeF32Linear
(olmo2/quant/f32.py) against fp64 and F.linear.

Error bound: the kernel's products are rounded once inside an FMA and summed in fp32 in its
own order (2W interleaved partial sums, then pairwise), so for each output element
|y - y_exact| <= gamma_K * sum_k |x_k||w_k|, gamma_K = K u / (1 - K u), u = 2^-24 (the
textbook bound for any summation order, Higham 3.1). F.linear (MKL) obeys the same bound in
another order, so the two differ by at most twice it.

Forcing: OLMO2_NATIVE_ISA=avx2 makes this AVX-512 host take the AVX2 paths and choose as an
AVX2-only CPU does (kernels._avx2_only); OLMO2_QUANT_KERNEL=native forces the choice too.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import native_library
from torch import nn

from olmo2.config import preset
from olmo2.model import Olmo2
from olmo2.quant import native
from olmo2.quant.f32 import NativeF32Linear, use_native_f32
from olmo2.quant.kernels import ENV, choose, cpu_flags

U = 2.0 ** -24
AVX512 = "avx512f" in cpu_flags()


@pytest.fixture(scope="module", autouse=True)
def lib(tmp_path_factory):
    yield from native_library(tmp_path_factory, ("OLMO2_NATIVE_ISA", "OLMO2_NATIVE", ENV))


@pytest.fixture
def forced(monkeypatch):
    """This host behaves as an AVX2-only CPU with the native fp32 kernel chosen."""
    monkeypatch.setenv("OLMO2_NATIVE_ISA", "avx2")
    monkeypatch.setenv(ENV, "native")
    native.reset()
    assert native.isa() == "avx2" and choose("fp32", "decode") == "native"
    yield
    monkeypatch.delenv("OLMO2_NATIVE_ISA")
    monkeypatch.delenv(ENV)
    native.reset()


def _isas():
    return ["avx512", "avx2"] if native.isa() == "avx512" else ["avx2"]


def _set_isa(monkeypatch, isa):
    monkeypatch.setenv("OLMO2_NATIVE_ISA", isa)
    native.reset()
    assert native.isa() == isa


def _bound(x, w):
    K = x.shape[1]
    g = K * U / (1 - K * U)
    return g * (x.double().abs() @ w.double().abs().T)


def _xw(M, K, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    x[0, 1] = 40.0  # a large entry: the bound scales with |x||w|, not with the typical size
    return x, torch.randn(N, K, generator=g) * 0.05


@pytest.mark.parametrize("K", [16, 48, 64, 2064])  # 48 and 2064: K % 32 == 16 (AVX-512 tail step)
@pytest.mark.parametrize("M", [1, 2, 3, 5, 8])
def test_kernel_within_fp32_bound_of_fp64(monkeypatch, M, K):
    x, w = _xw(M, K, 37, seed=M * 1000 + K)  # N = 37: nine quads and a tail of one
    exact = x.double() @ w.double().T
    for isa in _isas():
        _set_isa(monkeypatch, isa)
        y = native.f32_mm(x, w)
        assert y.dtype is torch.float32 and y.shape == (M, 37)
        err = (y.double() - exact).abs()
        assert (err <= _bound(x, w)).all(), f"{isa}: max err {err.max():.3g}"
    native.reset()


def test_bound_is_not_vacuous(monkeypatch):
    """A wrong weight row (a swapped pair) breaks the bound: the check can fail."""
    x, w = _xw(2, 64, 9)
    y = native.f32_mm(x, w[[1, 0, *range(2, 9)]])
    assert not ((y.double() - x.double() @ w.double().T).abs() <= _bound(x, w)).all()


def test_avx2_and_avx512_paths_close(monkeypatch):
    if native.isa() != "avx512":
        pytest.skip("no AVX-512 path on this CPU")
    x, w = _xw(3, 2048, 67, seed=3)
    ys = {}
    for isa in _isas():
        _set_isa(monkeypatch, isa)
        ys[isa] = native.f32_mm(x, w)
    native.reset()
    assert ((ys["avx2"] - ys["avx512"]).double().abs() <= 2 * _bound(x, w)).all()


def test_thread_count_does_not_change_bits(monkeypatch):
    x, w = _xw(3, 256, 203, seed=4)  # 50 quads + 3 tail rows, split unevenly across threads
    old = torch.get_num_threads()
    try:
        for isa in _isas():
            _set_isa(monkeypatch, isa)
            torch.set_num_threads(1)
            one = native.f32_mm(x, w)
            torch.set_num_threads(2)
            two = native.f32_mm(x, w)
            assert torch.equal(one, two)
            # a row's result does not depend on its quad either (tail rows run the same order)
            assert torch.equal(native.f32_mm(x, w[200:]), one[:, 200:])
    finally:
        torch.set_num_threads(old)
        native.reset()


def test_shapes_the_kernel_does_not_take():
    assert native.fits("fp32", 2048) and native.fits("fp32", 48) and not native.fits("fp32", 40)
    assert native.f32_mm(torch.zeros(0, 32), torch.zeros(5, 32)).shape == (0, 5)


def _linear(K, N, bias=False, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    lin.__class__ = NativeF32Linear
    return lin


def test_linear_takes_the_kernel_only_without_grad(forced, monkeypatch):
    lin = _linear(64, 33, bias=True)
    x = torch.randn(2, 3, 64)
    ref = F.linear(x, lin.weight, lin.bias)
    calls = []
    real = native.f32_mm
    monkeypatch.setattr(native, "f32_mm", lambda *a: calls.append(1) or real(*a))
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            y = lin(x)
        assert y.shape == ref.shape and len(calls) == 1
        calls.clear()
        # the bias adds one more term to each sum (F.linear adds it inside its GEMM, we after
        # the dot product: one more rounding of the result)
        g = 65 * U / (1 - 65 * U)
        b = g * (x.reshape(-1, 64).double().abs() @ lin.weight.double().abs().T + lin.bias.double().abs())
        err = (y - ref).double().abs().reshape(-1, 33)
        assert (err <= 2 * b + U * ref.double().abs().reshape(-1, 33)).all()
    # grad enabled and a weight that wants it: exactly F.linear, and backward works
    y = lin(x)
    assert not calls and torch.equal(y, ref)
    y.sum().backward()
    ref_lin = nn.Linear(64, 33, bias=True)
    ref_lin.load_state_dict(lin.state_dict())
    ref_lin(x).sum().backward()
    assert torch.equal(lin.weight.grad, ref_lin.weight.grad) and torch.equal(lin.bias.grad, ref_lin.bias.grad)
    # frozen weight but an input that wants grad (e.g. adapters upstream): still F.linear
    lin.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    lin(xg).sum().backward()
    assert not calls and xg.grad is not None
    # frozen weight, plain input, grad mode on (scoring without no_grad): the kernel
    lin(x)
    assert len(calls) == 1
    calls.clear()
    # prefill-sized calls and a K the kernel does not take stay on F.linear
    with torch.no_grad():
        big = torch.randn(16, 64)
        assert torch.equal(lin(big), F.linear(big, lin.weight, lin.bias))
        odd = _linear(40, 8)
        xo = torch.randn(1, 40)
        assert torch.equal(odd(xo), F.linear(xo, odd.weight))
    assert not calls


def test_state_dict_and_swap_rules(forced):
    m = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(32, 4, bias=False).double())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert use_native_f32(m) == 1  # the fp64 linear is left alone
    assert type(m[0]) is NativeF32Linear and type(m[2]) is nn.Linear and isinstance(m[0], nn.Linear)
    after = m.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    # a plain nn.Linear's state dict loads into the swapped module and back
    plain = nn.Linear(32, 8)
    m[0].load_state_dict(plain.state_dict())
    assert torch.equal(m[0].weight, plain.weight) and torch.equal(m[0].bias, plain.bias)


def test_not_swapped_unless_chosen(monkeypatch):
    """On this AVX-512 host, by default, fp32 keeps MKL and load swaps nothing."""
    if not AVX512:
        pytest.skip("this CPU has no AVX-512: the native kernel is its default")
    monkeypatch.delenv("OLMO2_NATIVE_ISA", raising=False)
    monkeypatch.delenv(ENV, raising=False)
    native.reset()
    assert choose("fp32", "decode") == "torch" and choose("fp32", "prefill") == "torch"
    m = nn.Sequential(nn.Linear(32, 8))
    assert use_native_f32(m) == 0 and type(m[0]) is nn.Linear
    # the AMD kind (OLMO2_NATIVE_ISA=avx2 alone) chooses native for decode, never prefill
    monkeypatch.setenv("OLMO2_NATIVE_ISA", "avx2")
    native.reset()
    assert choose("fp32", "decode") == "native" and choose("fp32", "prefill") == "torch"
    assert choose("fp32", "decode", native_fits=False) == "torch"
    monkeypatch.setenv(ENV, "reference")
    assert choose("fp32", "decode") == "torch"
    native.reset()


def _tiny(seed=0):
    cfg = dataclasses.replace(preset("tiny"), vocab_size=1001, max_seq_len=64)
    torch.manual_seed(seed)
    m = Olmo2(cfg)
    m.reset_parameters()
    with torch.no_grad():  # scaled up so greedy continuations vary instead of repeating
        for name, p in m.named_parameters():
            if "norm" not in name:
                p.mul_(3.0)
    return m.eval()


def test_tiny_model_greedy_tokens_equal(forced, tmp_path):
    from olmo2.checkpoint import load_model, save_model
    from olmo2.infer.generate import generate
    d = save_model(_tiny(), tmp_path / "m")
    plain = load_model(d)  # quant=None (training, conversion): never swapped
    swapped = load_model(d, quant="none")  # inference verbs: swapped where chosen
    assert not any(isinstance(m, NativeF32Linear) for m in plain.modules())
    n = sum(isinstance(m, NativeF32Linear) for m in swapped.modules())
    assert n == 2 * 7 + 1  # q k v o gate up down per layer, and the LM head
    prompt = torch.tensor([[5, 17, 300, 42, 999, 7]])
    a = generate(plain, prompt, max_new_tokens=24, temperature=0.0, eos_token_id=[])
    b = generate(swapped, prompt, max_new_tokens=24, temperature=0.0, eos_token_id=[])
    assert torch.equal(a, b)
    assert len(set(a[0, 6:].tolist())) > 3  # the continuation is not one repeated token
    # logits of one decode-sized call agree within the fp32 bound's scale
    with torch.no_grad():
        la, lb = plain(prompt[:, :1]), swapped(prompt[:, :1])
    assert torch.allclose(la, lb, rtol=0, atol=1e-4 * la.abs().max().item())


def test_compiles_to_one_graph(forced):
    mods = nn.Sequential(_linear(64, 48), nn.ReLU(), _linear(48, 37)).eval()
    x = torch.randn(1, 64)
    with torch.no_grad():
        eager = mods(x)
        comp = torch.compile(mods, backend="aot_eager", fullgraph=True)
        assert torch.equal(comp(x), eager)


def test_whole_tiny_model_forward_compiles_to_one_graph(forced):
    """A one-token forward of the swapped model: every linear's custom op is traced through
    (fullgraph would raise on a graph break), with eager's outputs."""
    m = _tiny(seed=1)
    assert use_native_f32(m) == 15
    ids = torch.tensor([[3]])
    with torch.no_grad():
        eager = m(ids)
        comp = torch.compile(m, backend="aot_eager", fullgraph=True)
        assert torch.equal(comp(ids), eager)


@pytest.mark.slow
def test_inductor_compiled_decode_step_gives_eager_tokens(forced):
    """Decoder(compile=True) (Inductor, freezing) on the swapped model: same greedy tokens."""
    from olmo2.infer.generate import generate
    m = _tiny(seed=2)
    assert use_native_f32(m) == 15
    x = torch.tensor([[11, 12, 13, 400]])
    eager = generate(m, x, 16, temperature=0.0, eos_token_id=[])
    assert torch.equal(generate(m, x, 16, temperature=0.0, eos_token_id=[], compile=True), eager)
