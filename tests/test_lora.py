"""LoRA (olmo2/post/lora.py) against peft on transformers' Olmo2ForCausalLM: same logits and
same adapter gradients; only adapters train in the loop (base weights bitwise unchanged, no
optimizer state for them); a merged export gives the adapter model's logits, in olmo2 and
in transformers."""
import pytest
import torch

from olmo2.checkpoint import load_model
from olmo2.post.lora import TARGETS, LoRAConfig, LoRALinear, apply_lora, merge_lora
from olmo2.train.config import TrainConfig
from olmo2.train.loop import train
from olmo2.train.state import export_hf, load_model_from_checkpoint

R, ALPHA = 4, 12.0


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomise_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def test_lora_matches_peft_logits_and_gradients(tmp_path):
    peft = pytest.importorskip("peft")
    from conftest import hf_olmo2
    hf = hf_olmo2("gqa").double()
    hf.save_pretrained(tmp_path / "base")
    ours = load_model(tmp_path / "base", dtype=torch.float64)
    ids = torch.randint(0, 257, (2, 11), generator=torch.Generator().manual_seed(1))
    base_logits = ours(ids)
    apply_lora(ours, LoRAConfig(r=R, alpha=ALPHA), seed=3)
    torch.testing.assert_close(ours(ids), base_logits, rtol=0, atol=0)    # B = 0: starts as the base
    _randomise_adapters(ours)
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                                 target_modules=list(TARGETS)))
    n = 0
    with torch.no_grad():
        for name, m in ours.named_modules():
            if isinstance(m, LoRALinear):
                pl = pm.get_submodule("base_model.model." + name)
                pl.lora_A["default"].weight.copy_(m.lora_A)
                pl.lora_B["default"].weight.copy_(m.lora_B)
                n += 1
    assert n == 3 * 7
    ref = pm(ids).logits
    got = ours(ids)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    # gradients of the same loss w.r.t. every adapter matrix
    got.logsumexp(-1).sum().backward()
    ref.logsumexp(-1).sum().backward()
    for name, m in ours.named_modules():
        if isinstance(m, LoRALinear):
            pl = pm.get_submodule("base_model.model." + name)
            torch.testing.assert_close(m.lora_A.grad, pl.lora_A["default"].weight.grad, rtol=0, atol=1e-10)
            torch.testing.assert_close(m.lora_B.grad, pl.lora_B["default"].weight.grad, rtol=0, atol=1e-10)
            assert m.weight.grad is None
    # peft's merge gives our merged weights
    merged_ref = pm.merge_and_unload().state_dict()
    merged = merge_lora(ours).state_dict()
    for k, v in merged.items():
        torch.testing.assert_close(v, merged_ref[k], rtol=0, atol=1e-12, msg=k)


def _cfg(**kw):
    base = dict(lr=1e-2, schedule="constant", warmup_tokens=0, global_batch_size=2, micro_batch_size=1,
                seq_len=12, max_steps=3, max_tokens=None, save_every=None, save_final=True, parallel="none",
                progress=False, seed=1, weight_decay=0.1)
    base.update(kw)
    return TrainConfig(**base)


class _Rows:
    def __init__(self, vocab):
        self.x = torch.randint(0, vocab, (6, 12), generator=torch.Generator().manual_seed(0))
        self.i = 0

    def __iter__(self):
        while self.i < 3:
            x = self.x[2 * self.i: 2 * self.i + 2]
            self.i += 1
            yield {"input_ids": x, "labels": x.clone()}

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, sd):
        self.i = sd["i"]


def test_only_adapters_train_and_merged_export_gives_the_adapter_logits(tmp_path):
    from conftest import hf_olmo2
    hf_olmo2("mha").save_pretrained(tmp_path / "base")
    model = load_model(tmp_path / "base")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(r=R, alpha=ALPHA), seed=0)
    from olmo2.train.loop import Callback

    class Grab(Callback):
        def on_step_end(self, state):
            self.opt = state.optimizer

    grab = Grab()
    res = train(model.config, _cfg(), _Rows(300), tmp_path / "run", model=model, callbacks=[grab])
    assert res.step == 3
    sd = model.state_dict()
    for k, v in before.items():
        assert torch.equal(sd[k], v), f"frozen {k} changed"
    lora = {k for k in sd if ".lora_" in k}
    assert len(lora) == 2 * 7 * 2 and all(not torch.equal(sd[k], torch.zeros_like(sd[k])) for k in lora if "lora_B" in k)
    # the optimizer holds (and has AdamW moments for) exactly the adapters
    names = {id(p): k for k, p in model.named_parameters()}
    held = {names[id(p)] for g in grab.opt.param_groups for p in g["params"]}
    assert held == lora and {names[id(p)] for p in grab.opt.state} == lora
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(5))
    model.eval()
    want = model(ids)
    merged = load_model_from_checkpoint(res.last_checkpoint)      # re-applies LoRA, then merges
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    torch.testing.assert_close(merged(ids), want, rtol=0, atol=1e-5)
    export_hf(res.last_checkpoint, tmp_path / "hf")
    transformers = pytest.importorskip("transformers")
    tm = transformers.Olmo2ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(tm(ids).logits, want, rtol=0, atol=1e-5)


def test_bad_lora_settings_are_config_errors():
    from olmo2.errors import ConfigError
    with pytest.raises(ConfigError, match="--lora: rank"):
        LoRAConfig(r=0)
    with pytest.raises(ConfigError, match="--lora-alpha"):
        LoRAConfig(r=2, alpha=-1.0)
    with pytest.raises(ConfigError, match="lora targets"):
        LoRAConfig(r=2, targets=("wq",))
