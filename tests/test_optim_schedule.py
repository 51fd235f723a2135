"""AdamW parameter groups and a hand-computed step; token-unit LR schedules (facts §3, §4)."""
import math
import os
import sys

import pytest
import torch

from olmo2.config import preset
from olmo2.errors import ConfigError
from olmo2.model import Olmo2
from olmo2.train.config import TrainConfig, anneal, field_docs
from olmo2.train.optim import build_optimizer, clean_name, param_groups
from olmo2.train.schedule import Constant, CosWithWarmup, LinearWithWarmup, build_schedule

BATCH_TOKENS = 512 * 4096  # 2,097,152


def tiny_model():
    torch.manual_seed(0)
    m = Olmo2(preset("tiny").replace(vocab_size=64, max_seq_len=64))
    m.reset_parameters(torch.Generator().manual_seed(0))
    return m


def test_param_groups_exclude_only_the_input_embedding():
    m = tiny_model()
    groups = param_groups(m, 0.1)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 1 and no_decay["params"][0] is m.model.embed_tokens.weight
    ids = {id(p) for p in decay["params"]}
    assert id(m.lm_head.weight) in ids                                  # LM head decayed
    assert id(m.model.norm.weight) in ids                               # norms decayed (OLMo 2)
    assert id(m.model.layers[0].self_attn.q_norm.weight) in ids
    assert len(decay["params"]) + 1 == len(list(m.parameters()))
    all_decay = param_groups(m, 0.1, decay_embeddings=True)
    assert len(all_decay) == 1


def test_clean_name_strips_wrappers():
    assert clean_name("module.model.embed_tokens.weight") == "model.embed_tokens.weight"
    assert clean_name("model.layers.0._checkpoint_wrapped_module._orig_mod.mlp.up_proj.weight") == \
        "model.layers.0.mlp.up_proj.weight"


def test_optimizer_hparams():
    opt = build_optimizer(tiny_model(), TrainConfig())
    for g in opt.param_groups:
        assert g["betas"] == (0.9, 0.95) and g["eps"] == 1e-8


def test_adamw_step_matches_hand_computation():
    m = tiny_model()
    cfg = TrainConfig(lr=1e-2)
    opt = build_optimizer(m, cfg)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    for step in (1, 2):  # two steps so the moments and bias corrections matter
        opt.zero_grad()
        m(ids).float().logsumexp(-1).mean().backward()
        grads = {n: p.grad.detach().clone() for n, p in m.named_parameters()}
        if step == 1:
            m1 = {n: torch.zeros_like(g) for n, g in grads.items()}
            v1 = {n: torch.zeros_like(g) for n, g in grads.items()}
        expected = {}
        for n, p in m.named_parameters():
            b1, b2, eps, lr = 0.9, 0.95, 1e-8, 1e-2
            wd = 0.0 if n == "model.embed_tokens.weight" else 0.1
            g = grads[n]
            m1[n] = b1 * m1[n] + (1 - b1) * g
            v1[n] = b2 * v1[n] + (1 - b2) * g * g
            mhat = m1[n] / (1 - b1 ** step)
            vhat = v1[n] / (1 - b2 ** step)
            p0 = p.detach() * (1 - lr * wd)
            expected[n] = p0 - lr * mhat / (vhat.sqrt() + eps)
        opt.step()
        for n, p in m.named_parameters():
            torch.testing.assert_close(p.detach(), expected[n], rtol=1e-5, atol=1e-7, msg=n)
    # the embedding was not decayed: with zero grads rows it keeps, others moved by Adam only
    assert not torch.equal(before["model.embed_tokens.weight"], m.model.embed_tokens.weight)


def test_stage1_cosine_lr_at_the_last_step():
    s = build_schedule(TrainConfig())  # 1B defaults: peak 4e-4, warmup 8,388,608,000, t_max 5e12
    assert isinstance(s, CosWithWarmup)
    lr = s.lr(1_907_359 * BATCH_TOKENS)
    assert abs(lr - 7.4487e-5) < 5e-10, lr
    assert s.lr(0) == 0.0
    assert math.isclose(s.lr(4000 * BATCH_TOKENS), 4e-4)        # warmup is 4000 steps
    assert math.isclose(s.lr(2000 * BATCH_TOKENS), 2e-4)
    assert math.isclose(s.lr(5e12), 4e-5)                      # alpha_f × peak at t_max
    assert math.isclose(s.lr(6e12), 4e-5)                      # and flat after
    mid = 8_388_608_000 + (5e12 - 8_388_608_000) / 2
    assert math.isclose(s.lr(mid), 4e-5 + 3.6e-4 / 2)


def test_linear_anneal_to_zero():
    cfg = anneal(TrainConfig(), start_lr=7.4487e-5, tokens=50_000_000_000)
    s = build_schedule(cfg)
    assert isinstance(s, LinearWithWarmup)
    assert s.lr(0) == 7.4487e-5
    assert math.isclose(s.lr(25e9), 7.4487e-5 / 2)
    assert s.lr(50e9) == 0.0 and s.lr(60e9) == 0.0
    assert cfg.max_tokens == 50_000_000_000 and cfg.warmup_tokens == 0


def test_constant_and_warmup_start():
    c = Constant(peak=1e-3, warmup_tokens=100)
    assert c.lr(50) == 5e-4 and c.lr(100) == 1e-3 and c.lr(1e9) == 1e-3
    w = CosWithWarmup(peak=1.0, warmup_tokens=10, warmup_start_frac=0.1, t_max_tokens=20, alpha_f=0.0)
    assert w.lr(0) == pytest.approx(0.1) and w.lr(10) == 1.0 and w.lr(20) == pytest.approx(0.0)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="exp")
    with pytest.raises(ConfigError, match="warmup_tokens"):
        TrainConfig(warmup_tokens=10, t_max_tokens=5)


def test_config_roundtrip_and_docs():
    cfg = TrainConfig(lr=1e-3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    docs = field_docs()
    assert "1e-4" in docs["z_loss_coeff"] and "1e-5" in docs["z_loss_coeff"]
    assert set(docs) >= {"lr", "warmup_tokens", "max_grad_norm", "resume", "init_from"}


def test_fused_adamw_is_cuda_only_with_a_clear_error_elsewhere(tmp_path):
    from olmo2.train.optim import adamw_kernel
    fused = TrainConfig(fused_adamw=True)
    assert adamw_kernel(fused, torch.device("cuda", 0)) == {"fused": True}
    assert adamw_kernel(TrainConfig(), torch.device("cuda", 0)) == {"foreach": False}
    assert adamw_kernel(TrainConfig(), torch.device("cpu")) == {"foreach": False}
    with pytest.raises(ConfigError, match="train.fused_adamw=true needs the parameters on CUDA .*cpu"):
        build_optimizer(tiny_model(), fused)
    # the loop refuses it before building the model (at 13B that takes minutes)
    sys.path.insert(0, os.path.dirname(__file__))
    from test_train_loop import MODEL_CFG, ArraySource, cfg, corpus
    from olmo2.train.loop import train
    with pytest.raises(ConfigError, match="fused_adamw"):
        train(MODEL_CFG, cfg(fused_adamw=True), ArraySource(corpus(4), 4), tmp_path)
    assert not list(tmp_path.glob("step-*"))
